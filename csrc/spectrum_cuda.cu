// CUDA log-magnitude spectrum: out = log1p(scale * |FFT2(r)|) over (planes, H, W) float32.
//
// cuFFT R2C (one batched 2D plan per (device, planes, H, W), cached; each call brings its own
// stream-ordered work area, so calls on different streams never share one) into a stream-ordered
// half-spectrum buffer (planes, H, W/2+1), then ONE fused epilogue kernel: magnitude, scale,
// log1p and the Hermitian mirror |X[k1, k2]| = |X[-k1 mod H, W - k2]| for k2 > W/2, written in
// (planes, H, W) float32 layout. The high-pass variant runs one 3x3 Laplacian kernel (valid part)
// in front of the FFT. Host API: spectrum_cuda.h; Python binding: spectrum_cuda_binding.cpp.
//
// Built by setup.py only where nvcc (and cufft.h) are found; linked against the static cudart
// and the shared cuFFT. No GPU in this project's CI: the tests only compile this file.
#include <cuda_runtime.h>
#include <cufft.h>

#include <climits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "spectrum_cuda.h"

namespace ofa_spectrum_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxGridY = 65535;

__global__ void log_mag_mirror_kernel(const cufftComplex* __restrict__ half,
                                      float* __restrict__ out, int64_t rows, int H, int W,
                                      int Wh, float scale) {
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const int64_t plane = row / H;
        const int k1 = int(row - plane * H);
        const int m1 = k1 == 0 ? 0 : H - k1;
        const cufftComplex* src = half + row * Wh;
        const cufftComplex* mir = half + (plane * H + m1) * Wh;
        float* dst = out + row * W;
        for (int k2 = blockIdx.x * blockDim.x + threadIdx.x; k2 < W;
             k2 += gridDim.x * blockDim.x) {
            const cufftComplex v = k2 < Wh ? src[k2] : mir[W - k2];
            dst[k2] = log1pf(scale * hypotf(v.x, v.y));
        }
    }
}

__global__ void laplacian_valid_kernel(const float* __restrict__ x, float* __restrict__ r,
                                       int64_t rows, int Hin, int Win) {
    const int H = Hin - 2, W = Win - 2;
    for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
        const int64_t plane = row / H;
        const int i = int(row - plane * H);
        const float* c = x + (plane * Hin + i + 1) * Win + 1;
        float* dst = r + row * W;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < W; j += gridDim.x * blockDim.x)
            dst[j] = 4.0f * c[j] - c[j - Win] - c[j + Win] - c[j - 1] - c[j + 1];
    }
}

dim3 grid_for(int64_t rows, int cols) {
    const int gx = (cols + kThreads - 1) / kThreads;
    const int gy = int(rows < kMaxGridY ? rows : kMaxGridY);
    return dim3(gx, gy > 0 ? gy : 1);
}

std::string cuda_msg(const char* what, cudaError_t e) {
    return std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
}

std::string cufft_msg(const char* what, cufftResult e) {
    return std::string(what) + ": cufftResult " + std::to_string(int(e));
}

class DeviceGuard {  // switches to `device` (>= 0) and back
  public:
    explicit DeviceGuard(int device) {
        if (device < 0) return;
        if (cudaGetDevice(&prev_) != cudaSuccess) return;
        if (prev_ != device && cudaSetDevice(device) == cudaSuccess) switched_ = true;
    }
    ~DeviceGuard() {
        if (switched_) cudaSetDevice(prev_);
    }

  private:
    int prev_ = -1;
    bool switched_ = false;
};

// Stream-ordered scratch (cudaMallocAsync); where memory pools are not supported, cudaMalloc and
// a synchronous free after the stream's work.
struct Scratch {
    void* ptr = nullptr;
    bool async = true;
    cudaError_t alloc(size_t bytes, cudaStream_t s) {
        cudaError_t e = cudaMallocAsync(&ptr, bytes, s);
        if (e == cudaErrorNotSupported) {
            cudaGetLastError();
            async = false;
            e = cudaMalloc(&ptr, bytes);
        }
        if (e != cudaSuccess) ptr = nullptr;
        return e;
    }
    void release(cudaStream_t s) {
        if (!ptr) return;
        if (async) {
            cudaFreeAsync(ptr, s);
        } else {
            cudaStreamSynchronize(s);
            cudaFree(ptr);
        }
        ptr = nullptr;
    }
};

using PlanKey = std::tuple<int, int64_t, int, int>;  // device, planes, H, W
struct Plan {
    cufftHandle handle;
    size_t work_bytes;  // the work area each call brings (auto-allocation is off)
};
// g_mutex guards the cache and every use of a cached plan: SetStream, SetWorkArea and Exec of
// one call run under it as one unit (a cuFFT plan is not thread-safe). No plan owns a work
// area: each call allocates its own, stream-ordered on its stream (released after its FFT in
// that stream's order), so two streams never share one while the FFT runs on the GPU.
std::mutex g_mutex;
std::map<PlanKey, Plan> g_plans;
constexpr size_t kMaxPlans = 16;

// Plans taken out of the cache (under g_mutex) are destroyed after their device has finished
// the work already queued with them; this waits for the device, so it runs with g_mutex
// released (other threads keep enqueueing meanwhile).
void destroy_retired(std::vector<std::pair<PlanKey, Plan>>& retired) {
    int prev = -1;
    cudaGetDevice(&prev);
    for (auto& kv : retired) {
        cudaSetDevice(std::get<0>(kv.first));
        cudaDeviceSynchronize();
        cufftDestroy(kv.second.handle);
    }
    retired.clear();
    if (prev >= 0) cudaSetDevice(prev);
}

// Moves every cached plan to `retired`; the caller holds g_mutex.
void retire_all(std::vector<std::pair<PlanKey, Plan>>& retired) {
    for (auto& kv : g_plans) retired.emplace_back(kv.first, kv.second);
    g_plans.clear();
}

// The cached plan for `key`, made when missing (the cache is emptied into `retired` when
// full); the caller holds g_mutex.
std::string find_plan(const PlanKey& key, Plan* out,
                      std::vector<std::pair<PlanKey, Plan>>& retired) {
    auto it = g_plans.find(key);
    if (it == g_plans.end()) {
        if (g_plans.size() >= kMaxPlans) retire_all(retired);
        Plan p{};
        cufftResult fe = cufftCreate(&p.handle);
        if (fe != CUFFT_SUCCESS) return cufft_msg("cufftCreate", fe);
        fe = cufftSetAutoAllocation(p.handle, 0);
        int n[2] = {std::get<2>(key), std::get<3>(key)};
        if (fe == CUFFT_SUCCESS)
            fe = cufftMakePlanMany(p.handle, 2, n, nullptr, 1, 0, nullptr, 1, 0, CUFFT_R2C,
                                   int(std::get<1>(key)), &p.work_bytes);
        if (fe != CUFFT_SUCCESS) {
            cufftDestroy(p.handle);
            return cufft_msg("cufftMakePlanMany", fe);
        }
        it = g_plans.emplace(key, p).first;
    }
    *out = it->second;
    return "";
}

// Enqueues R2C of `r` into `half` on `stream` with its own work area `work` (allocated here,
// stream-ordered; the caller releases it after the FFT on the same stream). Takes g_mutex for
// the plan's whole use; destroys evicted plans after releasing it.
std::string exec_r2c(const float* r, cufftComplex* half, int64_t planes, int H, int W,
                     cudaStream_t stream, Scratch* work) {
    int device = 0;
    cudaError_t ce = cudaGetDevice(&device);
    if (ce != cudaSuccess) return cuda_msg("cudaGetDevice", ce);
    std::vector<std::pair<PlanKey, Plan>> retired;
    std::string err;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        Plan plan{};
        err = find_plan(PlanKey{device, planes, H, W}, &plan, retired);
        if (err.empty() && plan.work_bytes > 0) {
            ce = work->alloc(plan.work_bytes, stream);
            if (ce != cudaSuccess) err = cuda_msg("allocating the cuFFT work area", ce);
        }
        cufftResult fe = CUFFT_SUCCESS;
        if (err.empty()) fe = cufftSetStream(plan.handle, stream);
        if (err.empty() && fe == CUFFT_SUCCESS) fe = cufftSetWorkArea(plan.handle, work->ptr);
        if (err.empty() && fe == CUFFT_SUCCESS)
            fe = cufftExecR2C(plan.handle, const_cast<cufftReal*>(r), half);
        if (err.empty() && fe != CUFFT_SUCCESS) err = cufft_msg("cufftExecR2C", fe);
    }
    destroy_retired(retired);
    return err;
}

std::string check_shape(int64_t planes, int H, int W) {
    if (planes < 0 || H < 1 || W < 1) return "bad shape: need planes >= 0, H >= 1, W >= 1";
    if (planes > INT_MAX) return "too many planes for one cuFFT plan (> INT_MAX)";
    return "";
}

// r (planes, H, W) on the device -> out; `r_owned` (the high-pass residual) is released after.
std::string run(const float* r, Scratch* r_owned, float* out, int64_t planes, int H, int W,
                float scale, cudaStream_t stream) {
    const int Wh = W / 2 + 1;
    Scratch half;
    cudaError_t ce = half.alloc(sizeof(cufftComplex) * size_t(planes) * H * Wh, stream);
    std::string err;
    if (ce != cudaSuccess) err = cuda_msg("allocating the half spectrum", ce);
    Scratch work;  // this call's cuFFT work area
    if (err.empty())
        err = exec_r2c(r, static_cast<cufftComplex*>(half.ptr), planes, H, W, stream, &work);
    if (err.empty()) {
        const int64_t rows = planes * H;
        log_mag_mirror_kernel<<<grid_for(rows, W), kThreads, 0, stream>>>(
            static_cast<const cufftComplex*>(half.ptr), out, rows, H, W, Wh,
            scale < 0 ? -scale : scale);
        ce = cudaGetLastError();
        if (ce != cudaSuccess) err = cuda_msg("log_mag_mirror_kernel", ce);
    }
    work.release(stream);
    half.release(stream);
    if (r_owned) r_owned->release(stream);
    return err;
}

}  // namespace

std::string log_spectrum(const float* r, float* out, int64_t planes, int H, int W, float scale,
                         void* stream, int device) {
    std::string err = check_shape(planes, H, W);
    if (!err.empty() || planes == 0) return err;
    DeviceGuard guard(device);
    return run(r, nullptr, out, planes, H, W, scale, static_cast<cudaStream_t>(stream));
}

std::string highpass_log_spectrum(const float* x, float* out, int64_t planes, int Hin, int Win,
                                  float scale, void* stream, int device) {
    const int H = Hin - 2, W = Win - 2;
    std::string err = check_shape(planes, H, W);
    if (!err.empty() || planes == 0) return err;
    DeviceGuard guard(device);
    const cudaStream_t s = static_cast<cudaStream_t>(stream);
    Scratch r;
    cudaError_t ce = r.alloc(sizeof(float) * size_t(planes) * H * W, s);
    if (ce != cudaSuccess) return cuda_msg("allocating the residual", ce);
    const int64_t rows = planes * H;
    laplacian_valid_kernel<<<grid_for(rows, W), kThreads, 0, s>>>(x, static_cast<float*>(r.ptr),
                                                                  rows, Hin, Win);
    ce = cudaGetLastError();
    if (ce != cudaSuccess) {
        r.release(s);
        return cuda_msg("laplacian_valid_kernel", ce);
    }
    return run(static_cast<const float*>(r.ptr), &r, out, planes, H, W, scale, s);
}

void clear_plans() {
    std::vector<std::pair<PlanKey, Plan>> retired;
    {
        std::lock_guard<std::mutex> lock(g_mutex);
        retire_all(retired);
    }
    destroy_retired(retired);  // waits for the devices without holding the lock
}

std::string version_info() {
    int rt = 0, fft = 0;
    cudaRuntimeGetVersion(&rt);
    cufftGetVersion(&fft);
    return "cudart " + std::to_string(rt) + " (static), cufft " + std::to_string(fft) +
           " (built against " + std::to_string(CUFFT_VERSION) + ")";
}

}  // namespace ofa_spectrum_cuda

// Host API of csrc/spectrum_cuda.cu (compiled by nvcc), used by csrc/spectrum_cuda_binding.cpp
// (compiled by the host compiler; no CUDA header needed here).
//
// All pointers are CUDA device pointers to contiguous float32 data; `stream` is a cudaStream_t
// (nullptr: the legacy default stream); `device` is the CUDA device the pointers live on (-1:
// the current device). Work is enqueued on `stream` and not waited for. Returns "" on success,
// else an error message (nothing was enqueued after the failing call).
#pragma once

#include <cstdint>
#include <string>

namespace ofa_spectrum_cuda {

// out (planes, H, W) = log1p(scale * |FFT2(r)|) of r (planes, H, W): cuFFT R2C of all planes in
// one batched plan, then one fused kernel (magnitude, scale, log1p, Hermitian mirror).
std::string log_spectrum(const float* r, float* out, int64_t planes, int H, int W, float scale,
                         void* stream, int device);

// out (planes, Hin-2, Win-2) = log1p(scale * |FFT2(L * x)|), L the 3x3 Laplacian
// [[0,-1,0],[-1,4,-1],[0,-1,0]] (valid part), x (planes, Hin, Win).
std::string highpass_log_spectrum(const float* x, float* out, int64_t planes, int Hin, int Win,
                                  float scale, void* stream, int device);

// Destroys the cached cuFFT plans (they are otherwise kept for the life of the process).
void clear_plans();

// cudart and cuFFT versions this was built and is running with, e.g. "cudart 13000, cufft 12000".
std::string version_info();

}  // namespace ofa_spectrum_cuda

// ofa_sdk._spectrum_cuda: pybind11 binding of csrc/spectrum_cuda.cu (host compiler, no torch
// and no CUDA headers at build time; linked with the nvcc object, static cudart, shared cuFFT).
//
// Two levels:
//  * raw device pointers (ints), for any framework:
//      log_spectrum_ptr(r_ptr, out_ptr, planes, H, W, scale=1.0, stream=0, device=-1)
//      highpass_log_spectrum_ptr(x_ptr, out_ptr, planes, H_in, W_in, scale=1.0, stream=0, device=-1)
//    contiguous float32 device buffers; out holds planes*H*W (resp. planes*(H_in-2)*(W_in-2))
//    floats; stream is a cudaStream_t as an int (0: legacy default stream); device -1: current.
//    The work is enqueued on `stream`; the call returns without waiting.
//  * torch CUDA tensors (duck-typed: no torch headers or link; torch is imported lazily):
//      log_spectrum(r, scale=1.0) -> tensor (..., H, W)
//      highpass_log_spectrum(x, scale=1.0) -> tensor (..., H-2, W-2)
//    r must be a float32 CUDA tensor (made contiguous if it is not); the output is a new tensor on
//    the same device, computed on torch's current stream of that device.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "spectrum_cuda.h"

namespace py = pybind11;

namespace {

void check(const std::string& err) {
    if (!err.empty()) throw std::runtime_error("ofa_sdk._spectrum_cuda: " + err);
}

py::object tensor_call(py::object t, double scale, bool highpass) {
    if (!py::hasattr(t, "is_cuda") || !t.attr("is_cuda").cast<bool>())
        throw std::invalid_argument("expected a torch CUDA tensor");
    if (py::str(t.attr("dtype")).cast<std::string>() != "torch.float32")
        throw std::invalid_argument("expected a float32 tensor");
    const int ndim = t.attr("dim")().cast<int>();
    if (ndim < 2) throw std::invalid_argument("expected a tensor of shape (..., H, W)");
    t = t.attr("contiguous")();
    std::vector<int64_t> shape = t.attr("shape").cast<std::vector<int64_t>>();
    const int Hin = int(shape[ndim - 2]), Win = int(shape[ndim - 1]);
    int64_t planes = 1;
    for (int d = 0; d < ndim - 2; ++d) planes *= shape[d];
    if (highpass) {
        if (Hin < 3 || Win < 3) throw std::invalid_argument("high-pass needs H >= 3 and W >= 3");
        shape[ndim - 2] -= 2;
        shape[ndim - 1] -= 2;
    }
    py::object out = t.attr("new_empty")(py::cast(shape));
    py::object device = t.attr("device");
    const int index = device.attr("index").cast<int>();
    py::module_ torch = py::module_::import("torch");
    const uintptr_t stream =
        torch.attr("cuda").attr("current_stream")(device).attr("cuda_stream").cast<uintptr_t>();
    const auto* in = reinterpret_cast<const float*>(t.attr("data_ptr")().cast<uintptr_t>());
    auto* dst = reinterpret_cast<float*>(out.attr("data_ptr")().cast<uintptr_t>());
    std::string err;
    {
        py::gil_scoped_release nogil;
        err = highpass ? ofa_spectrum_cuda::highpass_log_spectrum(in, dst, planes, Hin, Win,
                                                                  float(scale),
                                                                  reinterpret_cast<void*>(stream),
                                                                  index)
                       : ofa_spectrum_cuda::log_spectrum(in, dst, planes, Hin, Win, float(scale),
                                                         reinterpret_cast<void*>(stream), index);
    }
    check(err);
    return out;
}

}  // namespace

PYBIND11_MODULE(_spectrum_cuda, m) {
    m.doc() = "CUDA log1p(scale * |FFT2|): cuFFT R2C + one fused epilogue kernel (magnitude, "
              "scale, log1p, Hermitian mirror) in (..., H, W) float32 layout.";
    m.def(
        "log_spectrum_ptr",
        [](uintptr_t r, uintptr_t out, int64_t planes, int H, int W, double scale,
           uintptr_t stream, int device) {
            std::string err;
            {
                py::gil_scoped_release nogil;
                err = ofa_spectrum_cuda::log_spectrum(
                    reinterpret_cast<const float*>(r), reinterpret_cast<float*>(out), planes, H,
                    W, float(scale), reinterpret_cast<void*>(stream), device);
            }
            check(err);
        },
        py::arg("r_ptr"), py::arg("out_ptr"), py::arg("planes"), py::arg("H"), py::arg("W"),
        py::arg("scale") = 1.0, py::arg("stream") = 0, py::arg("device") = -1);
    m.def(
        "highpass_log_spectrum_ptr",
        [](uintptr_t x, uintptr_t out, int64_t planes, int Hin, int Win, double scale,
           uintptr_t stream, int device) {
            std::string err;
            {
                py::gil_scoped_release nogil;
                err = ofa_spectrum_cuda::highpass_log_spectrum(
                    reinterpret_cast<const float*>(x), reinterpret_cast<float*>(out), planes, Hin,
                    Win, float(scale), reinterpret_cast<void*>(stream), device);
            }
            check(err);
        },
        py::arg("x_ptr"), py::arg("out_ptr"), py::arg("planes"), py::arg("H_in"), py::arg("W_in"),
        py::arg("scale") = 1.0, py::arg("stream") = 0, py::arg("device") = -1);
    m.def(
        "log_spectrum", [](py::object r, double scale) { return tensor_call(r, scale, false); },
        py::arg("r"), py::arg("scale") = 1.0,
        "float32 CUDA tensor (..., H, W) -> new tensor log1p(scale * |FFT2(r)|), torch's current "
        "stream.");
    m.def(
        "highpass_log_spectrum",
        [](py::object x, double scale) { return tensor_call(x, scale, true); }, py::arg("x"),
        py::arg("scale") = 1.0,
        "float32 CUDA tensor (..., H, W) image -> new tensor (..., H-2, W-2) "
        "log1p(scale * |FFT2(Laplacian(x))|), torch's current stream.");
    m.def("clear_plans", &ofa_spectrum_cuda::clear_plans, "Destroy the cached cuFFT plans.");
    m.def("version_info", &ofa_spectrum_cuda::version_info);
}

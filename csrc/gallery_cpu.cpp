// ofa_sdk._gallery_cpu: the pair rule's gallery scoring (the paper's score, Sec. 4.1) on the CPU.
//
// For query first-layer parts q_i (Q, h) (PairHead.query_part), per profile p its support parts
// s_pj (S_p, h) (PairHead.support_part, which holds the first layer's bias), and the rest of the
// pair head Linear(h, h2) -> ReLU -> Linear(h2, 1):
//
//     out[i, p] = 1/S_p * sum_j sigmoid(w2 . relu(W1 relu(q_i + s_pj) + b1) + b2)
//
// the mean pair probability of query crop i against profile p's supports. The reference is
// ofa_sdk.scoring.PairHeadWeights.probs(...).mean(1) (numpy), which materialises the
// (chunk * S, h) block of relu(q + s) and runs the second layer as one BLAS product.
//
// How it is computed:
//  * One task = (query row, profile); tasks are shared out to std::threads through an atomic
//    counter (GIL released). Profiles are separate arrays (no gallery-sized concatenation).
//  * Per task, supports in blocks of JB = 6: the block's relu(q + s) rows (6 x h floats, in L1)
//    are formed once, then the second layer runs as a register-blocked micro-kernel: 6 rows x 16
//    outputs held in 12 vector accumulators, one k step = 2 vector loads of W1^T, 6 broadcasts
//    and 12 FMAs. Its ReLU and the dot with w2 follow in registers, so only 6 logits per block
//    leave them. A short final block is padded with zero rows whose logits are dropped.
//  * W1 is transposed once per call to (h, h2) so the 16 outputs of a k step are contiguous;
//    h2 is padded to a multiple of 16 with zero weights (relu(0) * 0 adds nothing).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu_common.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int VL = 8;   // floats per vector (one AVX register; two SSE registers otherwise)
constexpr int JB = 6;   // supports per block
constexpr int OB = 16;  // outputs per tile (two vectors)
typedef float vf __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));  // unaligned access

inline vf loadu(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline vf splat(float x) { return vf{} + x; }
inline vf vmax0(vf x) { return (x > 0) | (x != x) ? x : vf{}; }   // relu; NaN stays NaN, as in numpy
inline float hsum(vf v) {
    float s = 0.f;
    for (int l = 0; l < VL; ++l) s += v[l];
    return s;
}

struct Head {
    int h = 0, h2 = 0, h2p = 0;   // h2p: h2 padded to a multiple of OB
    std::vector<float> w1t;        // (h, h2p): W1 transposed, zero-padded
    std::vector<float> b1, w2;     // (h2p,) each, zero-padded
    float b2 = 0.f;
};

// Logits of JB rows x (h) against the head; x is (JB, h) row-major.
inline void block_logits(const Head& hd, const float* x, float* logit) {
    vf lacc[JB];
    for (int j = 0; j < JB; ++j) lacc[j] = vf{};
    for (int o = 0; o < hd.h2p; o += OB) {
        vf acc0[JB], acc1[JB];
        const vf bias0 = loadu(&hd.b1[o]), bias1 = loadu(&hd.b1[o + VL]);
        for (int j = 0; j < JB; ++j) {
            acc0[j] = bias0;
            acc1[j] = bias1;
        }
        const float* w = &hd.w1t[o];
        for (int k = 0; k < hd.h; ++k, w += hd.h2p) {
            const vf wa = loadu(w), wb = loadu(w + VL);
            for (int j = 0; j < JB; ++j) {
                const vf xb = splat(x[j * hd.h + k]);
                acc0[j] += xb * wa;
                acc1[j] += xb * wb;
            }
        }
        const vf v0 = loadu(&hd.w2[o]), v1 = loadu(&hd.w2[o + VL]);
        for (int j = 0; j < JB; ++j) lacc[j] += vmax0(acc0[j]) * v0 + vmax0(acc1[j]) * v1;
    }
    for (int j = 0; j < JB; ++j) logit[j] = hsum(lacc[j]) + hd.b2;
}

// Mean pair probability of one query row q (h,) against n support rows s (n, h).
float task_mean(const Head& hd, const float* q, const float* s, int64_t n, std::vector<float>& x) {
    double sum = 0.0;
    float logit[JB];
    for (int64_t j0 = 0; j0 < n; j0 += JB) {
        const int nb = int(std::min<int64_t>(JB, n - j0));
        for (int j = 0; j < JB; ++j) {
            float* xr = &x[size_t(j) * hd.h];
            if (j < nb) {
                const float* sr = s + (j0 + j) * hd.h;
                for (int k = 0; k < hd.h; ++k) {
                    const float v = q[k] + sr[k];
                    xr[k] = v > 0.f || v != v ? v : 0.f;   // relu keeping NaN
                }
            } else {
                std::fill(xr, xr + hd.h, 0.f);
            }
        }
        block_logits(hd, x.data(), logit);
        for (int j = 0; j < nb; ++j) sum += 1.0 / (1.0 + std::exp(-double(logit[j])));
    }
    return n > 0 ? float(sum / double(n)) : std::nanf("");
}

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

FArray need2d(const FArray& a, const char* name, int64_t cols) {
    if (a.ndim() != 2)
        throw std::invalid_argument(std::string(name) + " must be 2-D, got " + std::to_string(a.ndim()) + "-D");
    if (cols >= 0 && a.shape(1) != cols)
        throw std::invalid_argument(std::string(name) + " has " + std::to_string(a.shape(1)) +
                                    " columns, expected " + std::to_string(cols));
    return a;
}

py::array_t<float> pair_scores(FArray query_part, std::vector<FArray> parts, FArray w1, FArray b1,
                               FArray w2, double b2, int threads) {
    need2d(query_part, "query_part", -1);
    const int64_t Q = query_part.shape(0), h = query_part.shape(1);
    need2d(w1, "w1", h);
    const int64_t h2 = w1.shape(0);
    if (b1.ndim() != 1 || b1.shape(0) != h2)
        throw std::invalid_argument("b1 must have shape (" + std::to_string(h2) + ",)");
    if (w2.size() != h2) throw std::invalid_argument("w2 must have " + std::to_string(h2) + " values");
    if (!std::isfinite(b2)) throw std::invalid_argument("b2 must be finite");
    const int64_t P = int64_t(parts.size());
    for (int64_t p = 0; p < P; ++p) need2d(parts[p], ("parts[" + std::to_string(p) + "]").c_str(), h);

    Head hd;
    hd.h = int(h);
    hd.h2 = int(h2);
    hd.h2p = int((h2 + OB - 1) / OB * OB);
    hd.w1t.assign(size_t(h) * hd.h2p, 0.f);
    hd.b1.assign(hd.h2p, 0.f);
    hd.w2.assign(hd.h2p, 0.f);
    const float* W = w1.data();
    for (int64_t o = 0; o < h2; ++o) {
        for (int64_t k = 0; k < h; ++k) hd.w1t[size_t(k) * hd.h2p + o] = W[o * h + k];
        hd.b1[o] = b1.data()[o];
        hd.w2[o] = w2.data()[o];
    }
    hd.b2 = float(b2);

    std::vector<const float*> ptr(P);
    std::vector<int64_t> len(P);
    for (int64_t p = 0; p < P; ++p) {
        ptr[p] = parts[p].data();
        len[p] = parts[p].shape(0);
    }
    py::array_t<float> out({Q, P});
    float* o = out.mutable_data();
    const float* qp = query_part.data();
    const int64_t tasks = Q * P;
    {
        py::gil_scoped_release nogil;
        std::atomic<int64_t> next{0};
        ofa_cpu::run_threads(threads, tasks, [&]() {
            std::vector<float> x(size_t(JB) * h);
            for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) {
                const int64_t i = t / P, p = t % P;
                o[t] = task_mean(hd, qp + i * h, ptr[p], len[p], x);
            }
        });
    }
    return out;
}

std::string build_info() {
    return "vector " + std::to_string(VL) + " x float32, block " + std::to_string(JB) +
           " supports x " + std::to_string(OB) + " outputs" + ofa_cpu::simd_flags();
}

}  // namespace

PYBIND11_MODULE(_gallery_cpu, m) {
    ofa_cpu::require_build_cpu("ofa_sdk._gallery_cpu");
    m.doc() = "Pair-rule gallery scoring on the CPU: mean over each profile's supports of the pair "
              "head's probability, fused (no (Q, S, h) temporary), threaded over (query, profile).";
    m.def("pair_scores", &pair_scores, py::arg("query_part"), py::arg("parts"), py::arg("w1"),
          py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("threads") = 2,
          "query_part (Q, h) float32, parts: list of (S_p, h) float32 (support parts, first-layer "
          "bias included), w1 (h2, h), b1 (h2,), w2 (h2,) or (1, h2), b2 float -> (Q, P) float32 "
          "mean pair probability (NaN for an empty profile). threads <= 0: all cores.");
    m.def("build_info", &build_info, "SIMD flags the extension was compiled with.");
}

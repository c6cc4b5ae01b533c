// ofa_sdk._spectrum_cpu: T(r) = log1p(scale * |FFT2(r)|) per (H, W) plane, on the CPU.
//
// Same definition as ofa_sdk.models.spectrum.log_spectrum (full spectrum, no fftshift, no
// normalisation), with the residual scale folded in: log1p(|FFT2(scale * r)|).
//
// How it is computed (own code, no FFT library):
//  * Per plane, a real 2D FFT as two passes of complex 1D transforms. Pass 1 (along H) packs two
//    real columns c, c' of the plane as z = r[:, c] + i r[:, c'] and separates their spectra,
//        R_c[k] = (Z[k] + conj Z[-k]) / 2,   R_c'[k] = (Z[k] - conj Z[-k]) / (2i),
//    keeping rows k1 = 0 .. H/2 only (real columns have Hermitian spectra). Pass 2 (along W)
//    transforms those H/2 + 1 rows; rows H/2+1 .. H-1 of the output are the Hermitian mirror
//    |X[k1, k2]| = |X[H - k1, (W - k2) mod W]|, copied. Work ~ one rfft2; planes never mix.
//  * 1D transforms: Stockham autosort mixed radix (4, 2, and every odd prime: a generic odd
//    butterfly using the (k, p-k) symmetry, so any length works, at O(N * sum of odd prime
//    factors) -- e.g. 94 = 2 * 47, 222 = 2 * 3 * 37).
//  * SIMD across transforms: each "element" of a 1D transform is a vector of 8 floats holding
//    8 independent transforms (8 column pairs in the H pass, 8 rows after an 8x8 transpose in the
//    W pass), so every butterfly runs at full vector width without shuffles.
//  * Fused epilogue: magnitude, scale, a vectorised log1p (max error about 1 ulp), mirror copy;
//    the high-pass variant fuses the 3x3 Laplacian (valid part) into the loads of pass 1.
//  * Threads: std::thread over planes (``threads`` argument, default 2), GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "cpu_common.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace py = pybind11;

namespace {

constexpr int VL = 8;  // floats per vector (one AVX register; two SSE registers otherwise)
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef float vfu __attribute__((vector_size(VL * 4), aligned(4)));  // unaligned access

inline vf loadu(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void storeu(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
inline vf splat(float x) { return vf{} + x; }

inline vf vsqrt(vf x) {
#if defined(__AVX__)
    return (vf)_mm256_sqrt_ps((__m256)x);
#else
    vf r;
    for (int l = 0; l < VL; ++l) r[l] = std::sqrt(x[l]);
    return r;
#endif
}

inline vf vrcp(vf x) {  // 1 / x to ~1 ulp (x >= 1 here)
#if defined(__AVX__)
    const vf r = (vf)_mm256_rcp_ps((__m256)x);
    return r * (2.0f - x * r);  // one Newton step: ~23 bits
#else
    return 1.0f / x;
#endif
}

// log1p for x >= 0 (the domain here: scaled magnitudes). log(u) with u = 1 + x split as
// 2^e * m, m in [sqrt(1/2), sqrt(2)), a degree-9 polynomial for log(m) (Cephes logf
// coefficients), plus the correction (x - (u - 1)) / u for the rounding of 1 + x.
inline vf vlog1p(vf x) {
    const vf u = x + 1.0f;
    const vi iu = (vi)u;
    const vi e = (iu - 0x3f3504f3) >> 23;
    const vf m = (vf)(iu - (e << 23));
    const vf f = m - 1.0f;
    const vf c = (x - (u - 1.0f)) * vrcp(u);
    const vf ef = __builtin_convertvector(e, vf);
    const vf z = f * f;
    vf p = splat(7.0376836292e-2f);
    p = p * f - 1.1514610310e-1f;
    p = p * f + 1.1676998740e-1f;
    p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f;
    p = p * f - 1.6668057665e-1f;
    p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f;
    p = p * f + 3.3333331174e-1f;
    vf y = f * z * p;
    y = y + ef * -2.12194440e-4f;
    y = y - 0.5f * z;
    vf r = f + y;
    r = r + ef * 0.693359375f;
    r = r + c;
    // +inf -> +inf (c is NaN there); NaN stays NaN through c.
    const vi is_inf = x == std::numeric_limits<float>::infinity();
    return is_inf ? x : r;
}

// 8x8 transpose of the rows v[0..7] into the columns t[0..7].
inline void transpose8(const vf v[8], vf t[8]) {
    typedef int32_t m8 __attribute__((vector_size(32)));
    const m8 lo{0, 8, 1, 9, 4, 12, 5, 13}, hi{2, 10, 3, 11, 6, 14, 7, 15};
    const m8 l2{0, 1, 8, 9, 4, 5, 12, 13}, h2{2, 3, 10, 11, 6, 7, 14, 15};
    const m8 l4{0, 1, 2, 3, 8, 9, 10, 11}, h4{4, 5, 6, 7, 12, 13, 14, 15};
    vf a[8], b[8];
    for (int i = 0; i < 4; ++i) {
        a[2 * i] = __builtin_shuffle(v[2 * i], v[2 * i + 1], lo);
        a[2 * i + 1] = __builtin_shuffle(v[2 * i], v[2 * i + 1], hi);
    }
    for (int i = 0; i < 2; ++i) {
        b[4 * i + 0] = __builtin_shuffle(a[4 * i + 0], a[4 * i + 2], l2);
        b[4 * i + 1] = __builtin_shuffle(a[4 * i + 0], a[4 * i + 2], h2);
        b[4 * i + 2] = __builtin_shuffle(a[4 * i + 1], a[4 * i + 3], l2);
        b[4 * i + 3] = __builtin_shuffle(a[4 * i + 1], a[4 * i + 3], h2);
    }
    for (int i = 0; i < 4; ++i) {
        t[i] = __builtin_shuffle(b[i], b[i + 4], l4);
        t[i + 4] = __builtin_shuffle(b[i], b[i + 4], h4);
    }
}

inline vf reverse8(vf v) {
    typedef int32_t m8 __attribute__((vector_size(32)));
    const m8 r{7, 6, 5, 4, 3, 2, 1, 0};
    return __builtin_shuffle(v, r);
}

// ---------------------------------------------------------------------------------------------
// 1D complex FFT plan (forward, e^{-2 pi i jk/N}), Stockham autosort, decimation in frequency.
// Stage with radix p on a sub-length n = p * m and stride s: for pi < m, q < s,
//   a_j = x[q + s (pi + j m)],  y[q + s (p pi + k)] = (sum_j a_j w_p^{jk}) * w_n^{pi k}.

struct Stage {
    int p, m, s;
    size_t tw;  // offset of the m * (p - 1) twiddles w_n^{pi k}, k = 1 .. p-1
    size_t cs;  // offset of cos / sin(2 pi i / p), i < p (odd radices)
};

struct Plan {
    int n = 0;
    int max_half = 0;  // largest (p - 1) / 2 of the generic odd radices
    std::vector<Stage> stages;
    std::vector<float> twr, twi, cosv, sinv;

    explicit Plan(int n_) : n(n_) {
        std::vector<int> f;
        int r = n;
        while (r % 4 == 0) { f.push_back(4); r /= 4; }
        while (r % 2 == 0) { f.push_back(2); r /= 2; }
        for (int d = 3; d * d <= r; d += 2)
            while (r % d == 0) { f.push_back(d); r /= d; }
        if (r > 1) f.push_back(r);
        int cur = n, s = 1;
        for (int p : f) {
            Stage st;
            st.p = p;
            st.m = cur / p;
            st.s = s;
            st.tw = twr.size();
            for (int pi = 0; pi < st.m; ++pi)
                for (int k = 1; k < p; ++k) {
                    const double a = -2.0 * M_PI * double(pi) * double(k) / double(cur);
                    twr.push_back(float(std::cos(a)));
                    twi.push_back(float(std::sin(a)));
                }
            st.cs = cosv.size();
            if (p % 2 == 1) {
                for (int i = 0; i < p; ++i) {
                    const double a = 2.0 * M_PI * double(i) / double(p);
                    cosv.push_back(float(std::cos(a)));
                    sinv.push_back(float(std::sin(a)));
                }
                max_half = std::max(max_half, (p - 1) / 2);
            }
            stages.push_back(st);
            cur = st.m;
            s *= p;
        }
    }
};

inline void put(vf* yr, vf* yi, size_t idx, vf br, vf bi, const float* wr, const float* wi, int k,
                bool twiddle) {
    if (twiddle && k > 0) {
        const vf c = splat(wr[k - 1]), d = splat(wi[k - 1]);
        yr[idx] = br * c - bi * d;
        yi[idx] = br * d + bi * c;
    } else {
        yr[idx] = br;
        yi[idx] = bi;
    }
}

void stage_r2(const Plan& pl, const Stage& st, const vf* xr, const vf* xi, vf* yr, vf* yi) {
    const int m = st.m, s = st.s;
    for (int pi = 0; pi < m; ++pi) {
        const float* wr = pl.twr.data() + st.tw + size_t(pi);
        const float* wi = pl.twi.data() + st.tw + size_t(pi);
        const bool tw = pi > 0;
        for (int q = 0; q < s; ++q) {
            const size_t i0 = q + size_t(s) * pi, i1 = i0 + size_t(s) * m;
            const vf ar = xr[i0], ai = xi[i0], br = xr[i1], bi = xi[i1];
            const size_t o = q + size_t(s) * 2 * pi;
            put(yr, yi, o, ar + br, ai + bi, wr, wi, 0, tw);
            put(yr, yi, o + s, ar - br, ai - bi, wr, wi, 1, tw);
        }
    }
}

void stage_r4(const Plan& pl, const Stage& st, const vf* xr, const vf* xi, vf* yr, vf* yi) {
    const int m = st.m, s = st.s;
    for (int pi = 0; pi < m; ++pi) {
        const float* wr = pl.twr.data() + st.tw + size_t(pi) * 3;
        const float* wi = pl.twi.data() + st.tw + size_t(pi) * 3;
        const bool tw = pi > 0;
        for (int q = 0; q < s; ++q) {
            const size_t i0 = q + size_t(s) * pi, sm = size_t(s) * m;
            const vf a0r = xr[i0], a0i = xi[i0], a1r = xr[i0 + sm], a1i = xi[i0 + sm];
            const vf a2r = xr[i0 + 2 * sm], a2i = xi[i0 + 2 * sm];
            const vf a3r = xr[i0 + 3 * sm], a3i = xi[i0 + 3 * sm];
            const vf t0r = a0r + a2r, t0i = a0i + a2i, t1r = a0r - a2r, t1i = a0i - a2i;
            const vf t2r = a1r + a3r, t2i = a1i + a3i;
            const vf t3r = a1i - a3i, t3i = a3r - a1r;  // -i (a1 - a3)
            const size_t o = q + size_t(s) * 4 * pi;
            put(yr, yi, o, t0r + t2r, t0i + t2i, wr, wi, 0, tw);
            put(yr, yi, o + s, t1r + t3r, t1i + t3i, wr, wi, 1, tw);
            put(yr, yi, o + 2 * size_t(s), t0r - t2r, t0i - t2i, wr, wi, 2, tw);
            put(yr, yi, o + 3 * size_t(s), t1r - t3r, t1i - t3i, wr, wi, 3, tw);
        }
    }
}

// Odd radix p, compile-time (P > 0) or run-time (P == 0, scratch of 4 * (p-1)/2 vectors).
template <int P>
void stage_odd(const Plan& pl, const Stage& st, const vf* xr, const vf* xi, vf* yr, vf* yi,
               vf* scratch) {
    const int p = P > 0 ? P : st.p;
    const int h = (p - 1) / 2;
    const int m = st.m, s = st.s;
    const float* cs = pl.cosv.data() + st.cs;
    const float* sn = pl.sinv.data() + st.cs;
    constexpr int HS = P > 0 ? (P - 1) / 2 : 1;
    vf sbuf[4 * HS];
    vf* sr = P > 0 ? sbuf : scratch;
    vf* si = sr + h;
    vf* dr = si + h;
    vf* di = dr + h;
    for (int pi = 0; pi < m; ++pi) {
        const float* wr = pl.twr.data() + st.tw + size_t(pi) * (p - 1);
        const float* wi = pl.twi.data() + st.tw + size_t(pi) * (p - 1);
        const bool tw = pi > 0;
        for (int q = 0; q < s; ++q) {
            const size_t i0 = q + size_t(s) * pi, sm = size_t(s) * m;
            const vf a0r = xr[i0], a0i = xi[i0];
            vf b0r = a0r, b0i = a0i;
            for (int j = 1; j <= h; ++j) {
                const vf ar = xr[i0 + j * sm], ai = xi[i0 + j * sm];
                const vf cr = xr[i0 + (p - j) * sm], ci = xi[i0 + (p - j) * sm];
                sr[j - 1] = ar + cr;
                si[j - 1] = ai + ci;
                dr[j - 1] = ar - cr;
                di[j - 1] = ai - ci;
                b0r += sr[j - 1];
                b0i += si[j - 1];
            }
            const size_t o = q + size_t(s) * p * pi;
            put(yr, yi, o, b0r, b0i, wr, wi, 0, tw);
            // two outputs pairs (k, p-k) and (k+1, p-k-1) at a time: 8 independent FMA chains
            int k = 1;
            for (; k + 1 <= h; k += 2) {
                vf tr = a0r, ti = a0i, ur = vf{}, ui = vf{};
                vf tr2 = a0r, ti2 = a0i, ur2 = vf{}, ui2 = vf{};
                int idx = 0, idx2 = 0;
                for (int j = 1; j <= h; ++j) {
                    idx += k;
                    if (idx >= p) idx -= p;
                    idx2 += k + 1;
                    if (idx2 >= p) idx2 -= p;
                    const vf c = splat(cs[idx]), d = splat(sn[idx]);
                    const vf c2 = splat(cs[idx2]), d2 = splat(sn[idx2]);
                    const vf a = sr[j - 1], b = si[j - 1], e = di[j - 1], g = dr[j - 1];
                    tr += c * a;
                    ti += c * b;
                    ur += d * e;
                    ui += d * g;
                    tr2 += c2 * a;
                    ti2 += c2 * b;
                    ur2 += d2 * e;
                    ui2 += d2 * g;
                }
                put(yr, yi, o + size_t(s) * k, tr + ur, ti - ui, wr, wi, k, tw);
                put(yr, yi, o + size_t(s) * (p - k), tr - ur, ti + ui, wr, wi, p - k, tw);
                put(yr, yi, o + size_t(s) * (k + 1), tr2 + ur2, ti2 - ui2, wr, wi, k + 1, tw);
                put(yr, yi, o + size_t(s) * (p - k - 1), tr2 - ur2, ti2 + ui2, wr, wi, p - k - 1,
                    tw);
            }
            if (k <= h) {
                vf tr = a0r, ti = a0i, ur = vf{}, ui = vf{};
                int idx = 0;
                for (int j = 1; j <= h; ++j) {
                    idx += k;
                    if (idx >= p) idx -= p;
                    const vf c = splat(cs[idx]), d = splat(sn[idx]);
                    tr += c * sr[j - 1];
                    ti += c * si[j - 1];
                    ur += d * di[j - 1];
                    ui += d * dr[j - 1];
                }
                put(yr, yi, o + size_t(s) * k, tr + ur, ti - ui, wr, wi, k, tw);
                put(yr, yi, o + size_t(s) * (p - k), tr - ur, ti + ui, wr, wi, p - k, tw);
            }
        }
    }
}

// Transforms x (n vectors, re/im split) using y as the ping-pong buffer; returns the buffer
// holding the result (x or y).
bool fft(const Plan& pl, vf* xr, vf* xi, vf* yr, vf* yi, vf* scratch) {
    vf *ar = xr, *ai = xi, *br = yr, *bi = yi;
    for (const Stage& st : pl.stages) {
        switch (st.p) {
            case 2: stage_r2(pl, st, ar, ai, br, bi); break;
            case 3: stage_odd<3>(pl, st, ar, ai, br, bi, scratch); break;
            case 4: stage_r4(pl, st, ar, ai, br, bi); break;
            case 5: stage_odd<5>(pl, st, ar, ai, br, bi, scratch); break;
            case 7: stage_odd<7>(pl, st, ar, ai, br, bi, scratch); break;
            default: stage_odd<0>(pl, st, ar, ai, br, bi, scratch); break;
        }
        std::swap(ar, br);
        std::swap(ai, bi);
    }
    return ar != xr;
}

// ---------------------------------------------------------------------------------------------

inline int round_up(int x, int k) { return (x + k - 1) / k * k; }

struct Job {
    const float* in;     // (P, Hin, Win) planes
    float* out;          // (P, H, W) planes
    int64_t planes;
    int Hin, Win, H, W;  // H = Hin (- 2 for the high-pass variant)
    bool highpass;
    float half_scale;    // scale / 2 (the column separation leaves a factor 2)
};

constexpr int CB = 2 * VL;  // columns per pass-1 block: VL as the real part, VL as the imaginary

struct Workspace {
    int Hh, Hhp, Wp;  // rows k1 = 0 .. H/2 kept (padded to VL), columns padded to CB
    std::vector<vf> A;  // re plane then im plane, Hhp x Wp floats each
    std::vector<vf> xr, xi, yr, yi, scratch;

    Workspace(const Job& jb, const Plan& ph, const Plan& pw) {
        Hh = jb.H / 2 + 1;
        Hhp = round_up(Hh, VL);
        Wp = round_up(jb.W, CB);
        A.assign(size_t(2) * Hhp * Wp / VL, vf{});
        const int n = std::max(jb.H, Wp);
        xr.assign(n, vf{});
        xi.assign(n, vf{});
        yr.assign(n, vf{});
        yi.assign(n, vf{});
        scratch.assign(4 * std::max(1, std::max(ph.max_half, pw.max_half)), vf{});
    }
    float* re() { return reinterpret_cast<float*>(A.data()); }
    float* im() { return re() + size_t(Hhp) * Wp; }
};

// Rows of the residual of plane `src`, columns [c0, c0 + VL) into x[0 .. H): the input plane is
// read directly (plain copy or the 3x3 Laplacian), zero past column W.
void load_block(const Job& jb, const float* src, int c0, vf* x) {
    const int H = jb.H, W = jb.W, Wi = jb.Win;
    if (c0 + VL + (jb.highpass ? 2 : 0) <= Wi && c0 + VL <= W) {
        if (!jb.highpass) {
            for (int n1 = 0; n1 < H; ++n1) x[n1] = loadu(src + size_t(n1) * Wi + c0);
        } else {
            const float* p = src + c0;
            vf up = loadu(p + 1), mid = loadu(p + Wi + 1);
            for (int n1 = 0; n1 < H; ++n1) {
                const float* row = p + size_t(n1 + 1) * Wi;
                const vf dn = loadu(row + Wi + 1);
                x[n1] = 4.0f * mid - up - dn - loadu(row) - loadu(row + 2);
                up = mid;
                mid = dn;
            }
        }
        return;
    }
    for (int n1 = 0; n1 < H; ++n1) {  // partial (or empty) block at the right edge
        vf v{};
        for (int l = 0; l < VL && c0 + l < W; ++l) {
            const int n2 = c0 + l;
            if (!jb.highpass) {
                v[l] = src[size_t(n1) * Wi + n2];
            } else {
                const float* mid = src + size_t(n1 + 1) * Wi + n2 + 1;
                v[l] = 4.0f * mid[0] - mid[-Wi] - mid[Wi] - mid[-1] - mid[1];
            }
        }
        x[n1] = v;
    }
}

// Prefetch part `part` of `parts` of input plane `pn` (the thread's next plane), so that it
// arrives while this plane computes (pass 1 reads it with a stride of one row).
void prefetch_plane(const Job& jb, int64_t pn, int part, int parts) {
    if (pn < 0 || pn >= jb.planes) return;
    const size_t bytes = size_t(jb.Hin) * jb.Win * sizeof(float);
    const char* base = reinterpret_cast<const char*>(jb.in + pn * size_t(jb.Hin) * jb.Win);
    const size_t lo = bytes * part / parts, hi = bytes * (part + 1) / parts;
    for (size_t o = lo & ~size_t(63); o < hi; o += 64) __builtin_prefetch(base + o, 0, 2);
}

// One real plane. Pass 1 (along H): columns c and c + VL of the plane packed as the real and
// imaginary parts of one complex transform, VL column pairs per vector; the two real column
// spectra are separated (A = Z[k] + conj Z[-k], B = -i (Z[k] - conj Z[-k]), both 2x) and only
// rows k1 = 0 .. H/2 are kept (the column spectra are Hermitian). Pass 2 (along W): complex FFT of
// those rows, VL rows per vector through 8x8 transposes. Epilogue: log1p(scale/2 * |.|) of rows
// 0 .. H/2; rows H/2+1 .. H-1 are their Hermitian mirror |X[H-k1, (W-k2) mod W]|, copied from the
// output. Planes are independent: a NaN or a huge value in one never reaches another.
void run_plane(const Job& jb, const Plan& ph, const Plan& pw, Workspace& ws, int64_t pl,
               int64_t pnext) {
    const int H = jb.H, W = jb.W, Hh = ws.Hh, Hhp = ws.Hhp, Wp = ws.Wp;
    const float* src = jb.in + pl * size_t(jb.Hin) * jb.Win;
    float* out = jb.out + pl * size_t(H) * W;
    float* Ar = ws.re();
    float* Ai = ws.im();
    vf *xr = ws.xr.data(), *xi = ws.xi.data(), *yr = ws.yr.data(), *yi = ws.yi.data();
    vf* scr = ws.scratch.data();

    // Pass 1: along H.
    for (int c0 = 0; c0 < Wp; c0 += CB) {
        load_block(jb, src, c0, xr);
        load_block(jb, src, c0 + VL, xi);
        const bool in_y = fft(ph, xr, xi, yr, yi, scr);
        const vf* zr = in_y ? yr : xr;
        const vf* zi = in_y ? yi : xi;
        for (int k1 = 0; k1 < Hh; ++k1) {
            const int m1 = k1 == 0 ? 0 : H - k1;
            const vf ar = zr[k1], ai = zi[k1], br = zr[m1], bi = zi[m1];
            float* dr = Ar + size_t(k1) * Wp + c0;
            float* di = Ai + size_t(k1) * Wp + c0;
            storeu(dr, ar + br);           // 2 A[k1], columns c0 ..
            storeu(di, ai - bi);
            storeu(dr + VL, ai + bi);      // 2 B[k1], columns c0 + VL ..
            storeu(di + VL, br - ar);
        }
    }
    // Pass 2: along W, rows 0 .. Hhp-1 (rows >= Hh are zero), 8x8 transposes in and out.
    vf v[8], t[8];
    for (int r0 = 0; r0 < Hhp; r0 += VL) {
        prefetch_plane(jb, pnext, r0 / VL, Hhp / VL);
        for (int c0 = 0; c0 < Wp; c0 += VL) {
            for (int l = 0; l < 8; ++l) v[l] = loadu(Ar + size_t(r0 + l) * Wp + c0);
            transpose8(v, xr + c0);
            for (int l = 0; l < 8; ++l) v[l] = loadu(Ai + size_t(r0 + l) * Wp + c0);
            transpose8(v, xi + c0);
        }
        const bool in_y = fft(pw, xr, xi, yr, yi, scr);
        const vf* rr = in_y ? yr : xr;
        const vf* ri = in_y ? yi : xi;
        for (int c0 = 0; c0 < Wp; c0 += VL) {
            for (int l = 0; l < 8; ++l) v[l] = (c0 + l < W) ? rr[c0 + l] : vf{};
            transpose8(v, t);
            for (int l = 0; l < 8; ++l) storeu(Ar + size_t(r0 + l) * Wp + c0, t[l]);
            for (int l = 0; l < 8; ++l) v[l] = (c0 + l < W) ? ri[c0 + l] : vf{};
            transpose8(v, t);
            for (int l = 0; l < 8; ++l) storeu(Ai + size_t(r0 + l) * Wp + c0, t[l]);
        }
    }
    // Epilogue: rows 0 .. H/2 computed, the others mirrored.
    const vf hs = splat(jb.half_scale);
    alignas(32) float tail[VL];
    for (int k1 = 0; k1 < Hh; ++k1) {
        const float* zr = Ar + size_t(k1) * Wp;
        const float* zi = Ai + size_t(k1) * Wp;
        float* o = out + size_t(k1) * W;
        for (int c0 = 0; c0 < W; c0 += VL) {
            // scale first, so the squares stay in range for any output below ~1e19
            const vf ar = hs * loadu(zr + c0), ai = hs * loadu(zi + c0);
            const vf y = vlog1p(vsqrt(ar * ar + ai * ai));
            if (c0 + VL <= W) {
                storeu(o + c0, y);
            } else {
                storeu(tail, y);
                std::memcpy(o + c0, tail, sizeof(float) * (W - c0));
            }
        }
    }
    for (int k1 = Hh; k1 < H; ++k1) {
        const float* m = out + size_t(H - k1) * W;
        float* o = out + size_t(k1) * W;
        o[0] = m[0];
        int k2 = 1;
        for (; k2 + VL - 1 <= W - 1; k2 += VL) storeu(o + k2, reverse8(loadu(m + (W - k2 - (VL - 1)))));
        for (; k2 < W; ++k2) o[k2] = m[W - k2];
    }
}

void run_job(const Job& jb, int threads) {
    if (jb.planes == 0) return;
    const Plan ph(jb.H), pw(jb.W);
    std::atomic<int64_t> next{0};
    ofa_cpu::run_threads(threads, jb.planes, [&]() {
        Workspace ws(jb, ph, pw);
        // each thread reserves its next plane one ahead, to prefetch it
        for (int64_t i = next.fetch_add(1); i < jb.planes;) {
            const int64_t n = next.fetch_add(1);
            run_plane(jb, ph, pw, ws, i, n < jb.planes ? n : -1);
            i = n;
        }
    });
}

using FArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

py::array_t<float> call(FArray x, double scale, int threads, bool highpass) {
    const py::buffer_info bi = x.request();
    if (bi.ndim < 2)
        throw std::invalid_argument("expected an array of shape (..., H, W), e.g. (B, C, H, W)");
    if (!std::isfinite(scale)) throw std::invalid_argument("scale must be finite");
    Job jb;
    jb.Hin = int(bi.shape[bi.ndim - 2]);
    jb.Win = int(bi.shape[bi.ndim - 1]);
    jb.highpass = highpass;
    jb.H = highpass ? jb.Hin - 2 : jb.Hin;
    jb.W = highpass ? jb.Win - 2 : jb.Win;
    if (jb.H < 1 || jb.W < 1)
        throw std::invalid_argument(highpass ? "high-pass needs H >= 3 and W >= 3"
                                             : "H and W must be >= 1");
    jb.planes = 1;
    std::vector<py::ssize_t> shape(bi.shape.begin(), bi.shape.end());
    for (int d = 0; d < bi.ndim - 2; ++d) jb.planes *= shape[d];
    shape[bi.ndim - 2] = jb.H;
    shape[bi.ndim - 1] = jb.W;
    py::array_t<float> out(shape);
    jb.in = static_cast<const float*>(bi.ptr);
    jb.out = out.mutable_data();
    jb.half_scale = float(0.5 * scale);
    {
        py::gil_scoped_release nogil;
        run_job(jb, threads);
    }
    return out;
}

std::string build_info() { return "vector " + std::to_string(VL) + " x float32" + ofa_cpu::simd_flags(); }

}  // namespace

PYBIND11_MODULE(_spectrum_cpu, m) {
    ofa_cpu::require_build_cpu("ofa_sdk._spectrum_cpu");
    m.doc() = "log1p(scale * |FFT2|) of real (..., H, W) float32 planes (full spectrum, no "
              "fftshift, no normalisation); own mixed-radix SIMD FFT, threaded over planes.";
    m.def(
        "log_spectrum",
        [](FArray r, double scale, int threads) { return call(r, scale, threads, false); },
        py::arg("r"), py::arg("scale") = 1.0, py::arg("threads") = 2,
        "r: float32 (..., H, W) (numpy array or anything numpy converts, e.g. a CPU torch "
        "tensor; other dtypes are cast) -> float32 (..., H, W) = log1p(scale * |FFT2(r)|). "
        "threads <= 0: all cores.");
    m.def(
        "highpass_log_spectrum",
        [](FArray x, double scale, int threads) { return call(x, scale, threads, true); },
        py::arg("x"), py::arg("scale") = 1.0, py::arg("threads") = 2,
        "x: float32 (..., H, W) image -> float32 (..., H-2, W-2) = log1p(scale * |FFT2(L * x)|), "
        "L the 3x3 Laplacian [[0,-1,0],[-1,4,-1],[0,-1,0]] (valid part).");
    m.def("build_info", &build_info, "SIMD flags the extension was compiled with.");
}

// Shared by the CPU extensions (spectrum_cpu.cpp, gallery_cpu.cpp): what SIMD they were built
// with, the import-time check that this CPU has it, and the thread pool over independent tasks.
#pragma once

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace ofa_cpu {

// "avx512f, avx2, fma" or "generic (no AVX)": the flags the translation unit was compiled with.
inline std::string simd_flags() {
    std::string s;
#if defined(__AVX512F__)
    s += ", avx512f";
#endif
#if defined(__AVX2__)
    s += ", avx2";
#endif
#if defined(__FMA__)
    s += ", fma";
#endif
#if !defined(__AVX__)
    s += ", generic (no AVX)";
#endif
    return s;
}

// Raised at import when the module was built for AVX2/FMA and this CPU lacks them (a build
// moved between machines), instead of dying on an illegal instruction later.
inline void require_build_cpu(const char* module) {
#if defined(__x86_64__) && (defined(__AVX2__) || defined(__FMA__))
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        throw pybind11::import_error(std::string(module) +
                                     " was built with AVX2/FMA, which this CPU lacks: rebuild "
                                     "with OFA_SDK_CPU_FLAGS=generic");
#else
    (void)module;
#endif
}

// Runs worker() on min(threads, tasks) threads (threads <= 0: all cores), the calling thread
// included; worker shares the tasks out itself (an atomic counter). A thread that cannot be
// started leaves its share to the others; an exception in any worker is rethrown here after
// every thread has been joined (never std::terminate).
template <class F>
void run_threads(int threads, int64_t tasks, F&& worker) {
    if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
    const int nt = int(std::max<int64_t>(1, std::min<int64_t>(threads, tasks)));
    std::exception_ptr error;
    std::mutex lock;
    auto guarded = [&]() {
        try {
            worker();
        } catch (...) {
            std::lock_guard<std::mutex> g(lock);
            if (!error) error = std::current_exception();
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(nt - 1);
    for (int i = 0; i < nt - 1; ++i) {
        try {
            pool.emplace_back(guarded);
        } catch (const std::system_error&) {
            break;
        }
    }
    guarded();
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace ofa_cpu

// core/threads.h — a process-wide worker pool and parallel_for.
//
// Contract: parallel_for(b, e, grain, fn) calls fn(lo, hi) on disjoint sub-ranges covering
// [b, e), each at least `grain` long except possibly the last, from up to num_threads() threads
// (the caller participates). It returns when all calls are done; the first exception thrown by
// fn is rethrown in the caller. Nested calls from inside fn run serially. The pool size is
// hardware_concurrency() unless set_num_threads() (CLI --threads, env LLMC_THREADS) says otherwise.
// Thread counts are 1..kMaxThreads; parse_thread_count() throws llmc::Error naming the option
// outside that range (set_num_threads() above it). If the system cannot start all workers, the
// pool runs with those it got (and says so).
#pragma once
#include <cstddef>
#include <functional>
#include <string>

namespace llmc {

inline constexpr int kMaxThreads = 1024;

int num_threads();
void set_num_threads(int n);  // n <= 0: the default; n > kMaxThreads throws
// Parses a thread count given as `what` (e.g. "--threads", "LLMC_THREADS"): an integer in
// 1..kMaxThreads, else llmc::Error "<what> 'v' must be ...".
int parse_thread_count(const std::string& value, const std::string& what);
// Reads LLMC_THREADS (0 when unset); throws when it is set but invalid.
int threads_from_env();
void parallel_for(size_t begin, size_t end, size_t grain,
                  const std::function<void(size_t, size_t)>& fn);

}  // namespace llmc

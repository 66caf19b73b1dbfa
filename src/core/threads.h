// core/threads.h — a process-wide worker pool and parallel_for.
//
// Contract: parallel_for(b, e, grain, fn) calls fn(lo, hi) on disjoint sub-ranges covering
// [b, e), each at least `grain` long except possibly the last, from up to num_threads() threads
// (the caller participates). It returns when all calls are done; the first exception thrown by
// fn is rethrown in the caller. Nested calls from inside fn run serially. The pool size is
// hardware_concurrency() unless set_num_threads() (CLI --threads, env LLMC_THREADS) says otherwise.
#pragma once
#include <cstddef>
#include <functional>

namespace llmc {

int num_threads();
void set_num_threads(int n);  // n <= 0: hardware concurrency
void parallel_for(size_t begin, size_t end, size_t grain,
                  const std::function<void(size_t, size_t)>& fn);

}  // namespace llmc

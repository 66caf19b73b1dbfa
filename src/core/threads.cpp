#include "core/threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/progress.h"

namespace llmc {
namespace {

thread_local bool tl_in_parallel = false;

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    stop();
    stopping_ = false;
    for (int i = 0; i < n - 1; ++i) {
      try {
        workers_.emplace_back([this] { loop(); });
      } catch (const std::system_error& e) {
        log_warn(cat("could only start ", i + 1, " of ", n, " threads (", e.what(), "); continuing with ",
                     i + 1));
        break;
      }
    }
  }

  void run(size_t nchunks, const std::function<void(size_t)>& chunk) {
    std::unique_lock<std::mutex> lk(run_mu_);  // one parallel region at a time
    {
      std::lock_guard<std::mutex> g(mu_);
      job_ = &chunk;
      nchunks_ = nchunks;
      next_.store(0);
      done_ = 0;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> g(mu_);
    // Also wait for every worker that joined this region to leave it: a late one must not
    // take an index of the next region (another thread's, started as soon as run_mu_ is free).
    done_cv_.wait(g, [&] { return done_ == nchunks_ && active_ == 0; });
    job_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void work() {
    tl_in_parallel = true;
    for (;;) {
      const size_t i = next_.fetch_add(1);
      if (i >= nchunks_) break;
      try {
        (*job_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> g(mu_);
      if (++done_ == nchunks_) done_cv_.notify_all();
    }
    tl_in_parallel = false;
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return stopping_ || (generation_ != seen && job_ != nullptr); });
        if (stopping_) return;
        seen = generation_;
        ++active_;
      }
      work();
      {
        std::lock_guard<std::mutex> g(mu_);
        --active_;
      }
      done_cv_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(size_t)>* job_ = nullptr;
  size_t nchunks_ = 0, done_ = 0;
  int active_ = 0;  // workers inside work() (joined under mu_)
  std::atomic<size_t> next_{0};
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* e = std::getenv("LLMC_THREADS")) {
    try {
      return parse_thread_count(e, "LLMC_THREADS");
    } catch (const Error& err) {
      log_warn(cat(err.what(), "; using the number of cores"));  // the CLI refuses it up front
    }
  }
  return int(std::clamp(std::thread::hardware_concurrency(), 1u, unsigned(kMaxThreads)));
}

int g_threads = 0;
Pool* g_pool = nullptr;
std::mutex g_pool_mu;

Pool& pool() {
  std::lock_guard<std::mutex> g(g_pool_mu);
  if (!g_pool) {
    if (g_threads <= 0) g_threads = default_threads();
    g_pool = new Pool(g_threads);  // intentionally leaked: lives for the process
  }
  return *g_pool;
}

}  // namespace

int parse_thread_count(const std::string& value, const std::string& what) {
  size_t i = 0;
  bool neg = false;
  if (!value.empty() && (value[0] == '+' || value[0] == '-')) neg = value[0] == '-', i = 1;
  if (i >= value.size() || value.find_first_not_of("0123456789", i) != std::string::npos)
    fail(what, " '", value, "' is not an integer");
  const size_t nz = value.find_first_not_of('0', i);
  if (neg || nz == std::string::npos) fail(what, " ", value, ": must be >= 1");
  // More than 9 digits is above the cap whatever they are (and cannot overflow the conversion).
  const std::string num = value.substr(nz);
  if (num.size() > 9 || std::stol(num) > kMaxThreads) fail(what, " ", value, ": must be <= ", kMaxThreads);
  return int(std::stol(num));
}

int threads_from_env() {
  const char* e = std::getenv("LLMC_THREADS");
  if (!e || !*e) return 0;
  return parse_thread_count(e, "LLMC_THREADS");
}

int num_threads() {
  std::lock_guard<std::mutex> g(g_pool_mu);
  if (g_threads <= 0) g_threads = default_threads();
  return g_threads;
}

void set_num_threads(int n) {
  if (n > kMaxThreads) fail("thread count ", n, ": must be <= ", kMaxThreads);
  std::lock_guard<std::mutex> g(g_pool_mu);
  g_threads = n > 0 ? n : default_threads();
  if (g_pool) g_pool->resize(g_threads);
}

void parallel_for(size_t begin, size_t end, size_t grain,
                  const std::function<void(size_t, size_t)>& fn) {
  if (end <= begin) return;
  grain = std::max<size_t>(grain, 1);
  const size_t n = end - begin;
  const int nt = num_threads();
  if (tl_in_parallel || nt == 1 || n <= grain) { fn(begin, end); return; }
  // Aim for a few chunks per thread for balance, never below grain.
  size_t chunk = std::max(grain, (n + size_t(nt) * 4 - 1) / (size_t(nt) * 4));
  const size_t nchunks = (n + chunk - 1) / chunk;
  std::function<void(size_t)> job = [&](size_t i) {
    const size_t lo = begin + i * chunk;
    fn(lo, std::min(end, lo + chunk));
  };
  pool().run(nchunks, job);
}

}  // namespace llmc

// The fiber scheduler behind cuda_emulation.h: one ucontext fiber per CUDA thread of a
// block, run round-robin until each reaches a barrier or returns.
#include "cuda_emulation.h"

#include <ucontext.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace gct_fused_emu {
namespace {

constexpr size_t kStackBytes = 64 * 1024;  // kernel frames are small; ASan clears it on every switch
constexpr unsigned kWarp = 32;

enum class State { kRunnable, kBlockWait, kWarpWait, kDone };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  State state = State::kRunnable;
  uint64_t waiting_for = 0;  // generation of the barrier it waits at
  unsigned tid = 0;
};

struct Run {
  dim3 grid, block;
  uint3 block_idx{0, 0, 0};
  unsigned threads = 0;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  unsigned block_arrived = 0;
  uint64_t block_generation = 0;
  std::vector<unsigned> warp_arrived;
  std::vector<uint64_t> warp_generation;
  std::vector<uint64_t> warp_slots;
  std::vector<unsigned char> shared;
  std::exception_ptr error;
};

thread_local Run* active = nullptr;

Run& run() {
  if (active == nullptr) throw std::logic_error("CUDA emulation: device builtin used outside a kernel launch");
  return *active;
}

unsigned lanes_in_warp(const Run& r, unsigned warp) {
  const unsigned first = warp * kWarp;
  return r.threads - first < kWarp ? r.threads - first : kWarp;
}

void fiber_main(int index) {
  Run& r = *active;
  try {
    (*r.body)();
  } catch (...) {
    if (!r.error) r.error = std::current_exception();
  }
  r.fibers[static_cast<size_t>(index)].state = State::kDone;
  // returning resumes uc_link, the scheduler
}

void wait_here(State state, uint64_t generation) {
  Run& r = run();
  r.current->state = state;
  r.current->waiting_for = generation;
  swapcontext(&r.current->context, &r.scheduler);
}

void sync_warp() {
  Run& r = run();
  const unsigned warp = r.current->tid / kWarp;
  const uint64_t generation = r.warp_generation[warp];
  if (++r.warp_arrived[warp] == lanes_in_warp(r, warp)) {
    r.warp_arrived[warp] = 0;
    ++r.warp_generation[warp];
    return;
  }
  wait_here(State::kWarpWait, generation);
}

void run_block(Run& r) {
  for (unsigned t = 0; t < r.threads; ++t) {
    Fiber& f = r.fibers[t];
    f.state = State::kRunnable;
    f.tid = t;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &r.scheduler;
    makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_main), 1, static_cast<int>(t));
  }
  r.block_arrived = 0;
  std::fill(r.warp_arrived.begin(), r.warp_arrived.end(), 0u);
  std::fill(r.shared.begin(), r.shared.end(), static_cast<unsigned char>(0xff));  // NaN if read unwritten
  for (;;) {
    bool all_done = true, progressed = false;
    for (Fiber& f : r.fibers) {
      if (f.state == State::kDone) continue;
      all_done = false;
      if (f.state == State::kBlockWait && r.block_generation == f.waiting_for) continue;
      if (f.state == State::kWarpWait && r.warp_generation[f.tid / kWarp] == f.waiting_for) continue;
      f.state = State::kRunnable;
      r.current = &f;
      swapcontext(&r.scheduler, &f.context);
      progressed = true;
      if (r.error) std::rethrow_exception(r.error);
    }
    if (all_done) return;
    if (!progressed) {
      unsigned at_block = 0, at_warp = 0, done = 0;
      for (const Fiber& f : r.fibers) {
        at_block += f.state == State::kBlockWait;
        at_warp += f.state == State::kWarpWait;
        done += f.state == State::kDone;
      }
      throw std::runtime_error("CUDA emulation: deadlock in block (" + std::to_string(r.block_idx.x) + ", " +
                               std::to_string(r.block_idx.y) + "): " + std::to_string(at_block) +
                               " threads at __syncthreads, " + std::to_string(at_warp) +
                               " at a warp shuffle, " + std::to_string(done) + " returned");
    }
  }
}

}  // namespace

uint3 thread_index() {
  const Run& r = run();
  const unsigned t = r.current->tid;
  return uint3{t % r.block.x, (t / r.block.x) % r.block.y, t / (r.block.x * r.block.y)};
}
uint3 block_index() { return run().block_idx; }
dim3 block_dim() { return run().block; }
dim3 grid_dim() { return run().grid; }

void sync_block() {
  Run& r = run();
  const uint64_t generation = r.block_generation;
  if (++r.block_arrived == r.threads) {
    r.block_arrived = 0;
    ++r.block_generation;
    return;
  }
  wait_here(State::kBlockWait, generation);
}

void* dynamic_shared() { return run().shared.data(); }

uint64_t shuffle_xor_bits(unsigned mask, uint64_t bits, int offset) {
  if (mask != 0xffffffffu) throw std::logic_error("CUDA emulation: only full-warp shuffles are emulated");
  Run& r = run();
  const unsigned tid = r.current->tid, warp = tid / kWarp, lane = tid % kWarp;
  const unsigned partner = lane ^ static_cast<unsigned>(offset);
  if (partner >= lanes_in_warp(r, warp)) throw std::logic_error("CUDA emulation: shuffle from a missing lane");
  r.warp_slots[tid] = bits;
  sync_warp();
  const uint64_t out = r.warp_slots[warp * kWarp + partner];
  sync_warp();
  return out;
}

void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  if (active != nullptr) throw std::logic_error("CUDA emulation: nested launch");
  Run r;
  r.grid = grid;
  r.block = block;
  r.threads = block.x * block.y * block.z;
  r.body = &body;
  r.fibers.resize(r.threads);
  for (Fiber& f : r.fibers) f.stack.reset(new char[kStackBytes]);
  const unsigned warps = (r.threads + kWarp - 1) / kWarp;
  r.warp_arrived.assign(warps, 0);
  r.warp_generation.assign(warps, 0);
  r.warp_slots.assign(size_t(warps) * kWarp, 0);
  r.shared.assign(shared_bytes, 0);
  active = &r;
  try {
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          r.block_idx = uint3{x, y, z};
          run_block(r);
        }
      }
    }
  } catch (...) {
    active = nullptr;
    throw;
  }
  active = nullptr;
}

}  // namespace gct_fused_emu

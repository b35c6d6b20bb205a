// The flight recorder: the last N operations this rank took part in (kind, tensor name,
// sequence number, bytes, phase, the peer it was waiting on when it failed) and what the engine
// is doing right now. When the engine fails it is printed, or written as JSON to
// RINGFLOW_FLIGHT_RECORDER=dir, so that a failed or hung job shows what every rank was doing;
// the heartbeat publishes the "now" line to the other ranks while the job runs.
//
// Updated by submitting threads and by whoever drives the engine, read by the heartbeat: one
// mutex, held for a few copies per operation.
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace rf {

enum class FlightPhase : uint8_t {
  kNegotiating,  // submitted; waiting for the other ranks to submit it too
  kRunning,      // its collective is moving data
  kDone,
  kFailed,
};

const char* flight_phase_name(FlightPhase phase);

struct FlightEntry {
  uint64_t id = 0;        // this rank's submission order
  const char* kind = "";  // op_kind_name(): a static string
  std::string name;
  int process_set = 0;
  uint64_t bytes = 0;  // this rank's input
  uint64_t seq = 0;    // the operation's sequence number (its frames' tag); 0 until it runs
  int fused_with = 0;  // other tensors that travelled in the same operation
  FlightPhase phase = FlightPhase::kNegotiating;
  int peer = -1;  // the job rank this rank was waiting on when the operation failed
  int64_t submitted_us = 0;
  int64_t started_us = 0;
  int64_t ended_us = 0;
};

class FlightRecorder {
 public:
  explicit FlightRecorder(size_t capacity);

  // Returns the entry's id (0 when the recorder keeps no entries).
  uint64_t submitted(FlightEntry entry);
  void running(uint64_t id, uint64_t seq, int fused_with, int64_t now_us);
  void finished(uint64_t id, bool ok, int peer, int64_t now_us);

  // What the engine does now: "negotiation round #57", "allreduce of 'w' (#58, 4096 bytes)".
  // `detail` is formatted only when someone asks (activity()).
  void set_activity(const char* what, uint64_t seq, const std::string& name = {},
                    uint64_t bytes = 0);
  void set_idle(size_t waiting_tensors);
  std::string activity() const;

  std::vector<FlightEntry> entries() const;  // oldest first
  uint64_t total() const;                    // entries ever recorded

  // The whole record: for stderr, and as one JSON object. `now`: activity() and the peer this
  // rank waits on, as the engine describes it.
  std::string to_text(int rank, int size, const std::string& error, const std::string& now) const;
  std::string to_json(int rank, int size, const std::string& error, const std::string& now) const;

 private:
  FlightEntry* find(uint64_t id);  // caller holds mutex_; null once evicted

  const size_t capacity_;
  mutable std::mutex mutex_;
  std::deque<FlightEntry> entries_;
  uint64_t next_id_ = 1;
  // The activity, kept as parts so that the hot path copies no more than a name.
  const char* what_ = "idle";
  uint64_t what_seq_ = 0;
  std::string what_name_;
  uint64_t what_bytes_ = 0;
  size_t waiting_tensors_ = 0;
};

}  // namespace rf

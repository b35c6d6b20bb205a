#include "ringflow/engine/flight_recorder.h"

#include <cstdio>
#include <sstream>

#include "ringflow/common/json.h"
#include "ringflow/engine/timeline.h"

namespace rf {

namespace {

std::string peer_text(int peer) { return peer < 0 ? "-" : "rank " + std::to_string(peer); }

// Milliseconds from `from` to `to`, or "-" when either end has not happened.
std::string span_ms(int64_t from_us, int64_t to_us) {
  if (from_us == 0 || to_us == 0) return "-";
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", (to_us - from_us) / 1000.0);
  return text;
}

}  // namespace

const char* flight_phase_name(FlightPhase phase) {
  switch (phase) {
    case FlightPhase::kNegotiating:
      return "negotiating";
    case FlightPhase::kRunning:
      return "running";
    case FlightPhase::kDone:
      return "done";
    case FlightPhase::kFailed:
      return "failed";
  }
  return "?";
}

FlightRecorder::FlightRecorder(size_t capacity) : capacity_(capacity) {}

uint64_t FlightRecorder::submitted(FlightEntry entry) {
  if (capacity_ == 0) return 0;
  std::lock_guard<std::mutex> lock(mutex_);
  entry.id = next_id_++;
  if (entries_.size() == capacity_) entries_.pop_front();
  entries_.push_back(std::move(entry));
  return entries_.back().id;
}

FlightEntry* FlightRecorder::find(uint64_t id) {
  // Ids are consecutive, so an entry's place follows from the oldest one kept.
  if (id == 0 || entries_.empty() || id < entries_.front().id) return nullptr;
  const uint64_t index = id - entries_.front().id;
  return index < entries_.size() ? &entries_[index] : nullptr;
}

void FlightRecorder::running(uint64_t id, uint64_t seq, int fused_with, int64_t now) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (FlightEntry* entry = find(id)) {
    entry->phase = FlightPhase::kRunning;
    entry->seq = seq;
    entry->fused_with = fused_with;
    entry->started_us = now;
  }
}

void FlightRecorder::finished(uint64_t id, bool ok, int peer, int64_t now) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (FlightEntry* entry = find(id)) {
    entry->phase = ok ? FlightPhase::kDone : FlightPhase::kFailed;
    entry->peer = ok ? -1 : peer;
    entry->ended_us = now;
  }
}

void FlightRecorder::set_activity(const char* what, uint64_t seq, const std::string& name,
                                  uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  what_ = what;
  what_seq_ = seq;
  what_name_ = name;
  what_bytes_ = bytes;
}

void FlightRecorder::set_idle(size_t waiting_tensors) {
  std::lock_guard<std::mutex> lock(mutex_);
  what_ = "idle";
  waiting_tensors_ = waiting_tensors;
}

std::string FlightRecorder::activity() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::ostringstream text;
  text << what_;
  if (std::string(what_) == "idle") {
    if (waiting_tensors_ > 0) {
      text << ", " << waiting_tensors_ << " tensor(s) wait for other ranks to submit";
    }
    // What it did last tells where a rank that stopped between operations was in its program.
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
      if (it->phase == FlightPhase::kNegotiating) continue;
      text << ", last ran " << it->kind << " of '" << it->name << "' (#" << it->seq << ", "
           << flight_phase_name(it->phase) << ")";
      break;
    }
    return text.str();
  }
  if (!what_name_.empty()) text << " of '" << what_name_ << "'";
  text << " (#" << what_seq_;
  if (what_bytes_ > 0) text << ", " << what_bytes_ << " bytes";
  text << ")";
  return text.str();
}

std::vector<FlightEntry> FlightRecorder::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return {entries_.begin(), entries_.end()};
}

uint64_t FlightRecorder::total() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return next_id_ - 1;
}

std::string FlightRecorder::to_text(int rank, int size, const std::string& error,
                                    const std::string& now) const {
  const std::vector<FlightEntry> kept = entries();
  const int64_t at = Timeline::now_us();  // the clock the engine stamps entries with
  std::ostringstream text;
  text << "ringflow flight recorder, rank " << rank << " of " << size << ": the last "
       << kept.size() << " of " << total() << " operations, oldest first\n"
       << "  failure: " << error << "\n"
       << "  now: " << now << "\n";
  char header[160];
  std::snprintf(header, sizeof(header), "  %-6s %-4s %-12s %-12s %9s  %-3s  %-9s  %6s  %7s  %s\n",
                "id", "seq", "phase", "kind", "bytes", "set", "waited on", "ms ago", "took ms",
                "name");
  text << header;
  for (const FlightEntry& e : kept) {
    char line[160];
    std::snprintf(line, sizeof(line), "  %-6llu %-4llu %-12s %-12s %9llu  %-3d  %-9s  %6s  %7s  ",
                  static_cast<unsigned long long>(e.id), static_cast<unsigned long long>(e.seq),
                  flight_phase_name(e.phase), e.kind, static_cast<unsigned long long>(e.bytes),
                  e.process_set, peer_text(e.peer).c_str(), span_ms(e.submitted_us, at).c_str(),
                  span_ms(e.started_us, e.ended_us).c_str());
    text << line << "'" << e.name << "'";
    if (e.fused_with > 0) text << " (fused with " << e.fused_with << " more)";
    text << "\n";
  }
  return text.str();
}

std::string FlightRecorder::to_json(int rank, int size, const std::string& error,
                                    const std::string& now) const {
  const std::vector<FlightEntry> kept = entries();
  std::ostringstream json;
  json << "{\"rank\":" << rank << ",\"size\":" << size << ",\"error\":\"" << json_escape(error)
       << "\",\"now\":\"" << json_escape(now) << "\",\"total\":" << total() << ",\"entries\":[";
  for (size_t i = 0; i < kept.size(); ++i) {
    const FlightEntry& e = kept[i];
    json << (i ? "," : "") << "\n{\"id\":" << e.id << ",\"seq\":" << e.seq << ",\"kind\":\""
         << json_escape(e.kind) << "\",\"name\":\"" << json_escape(e.name)
         << "\",\"process_set\":" << e.process_set << ",\"bytes\":" << e.bytes
         << ",\"fused_with\":" << e.fused_with << ",\"phase\":\"" << flight_phase_name(e.phase)
         << "\",\"peer\":" << e.peer << ",\"submitted_us\":" << e.submitted_us
         << ",\"started_us\":" << e.started_us << ",\"ended_us\":" << e.ended_us << "}";
  }
  json << "]}\n";
  return json.str();
}

}  // namespace rf

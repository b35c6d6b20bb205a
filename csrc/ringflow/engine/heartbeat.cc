#include "ringflow/engine/heartbeat.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "ringflow/common/check.h"
#include "ringflow/common/log.h"

namespace rf {

namespace {

// Heartbeats older than this many intervals mean the rank stopped answering: one beat may be
// late under load, three in a row are not.
constexpr double kStaleIntervals = 3.0;
// The status of a rank that shut down in order (its heartbeat is old, and that is fine).
constexpr const char* kDepartedStatus = "shut down (left the job in order)";
// Ranks read and listed in a failure message (a bigger job: its first ones only).
constexpr int kMaxListedRanks = 64;
// Every store request of the heartbeat ends within about this long (the failure path waits on
// it, and a store whose host was stopped must not hold it for the usual minute).
constexpr double kStoreSeconds = 1.0;

int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Heartbeat::Heartbeat(HeartbeatOptions options, std::function<std::string()> status)
    : options_(std::move(options)), status_(std::move(status)) {
  options_.store.request_timeout_s = kStoreSeconds;
  options_.store.reply_slack_s = kStoreSeconds;
  store_ =
      std::make_shared<TcpStoreClient>(options_.store, Deadline::after_seconds(5 * kStoreSeconds));
  thread_ = std::thread([this] { run(); });
}

std::shared_ptr<TcpStoreClient> Heartbeat::store() {
  std::lock_guard<std::mutex> lock(store_mutex_);
  if (!store_) {
    try {
      store_ =
          std::make_shared<TcpStoreClient>(options_.store, Deadline::after_seconds(kStoreSeconds));
    } catch (const std::exception&) {
      return nullptr;
    }
  }
  return store_;
}

void Heartbeat::drop_store(const std::shared_ptr<TcpStoreClient>& broken) {
  std::lock_guard<std::mutex> lock(store_mutex_);
  if (store_ == broken) store_.reset();
}

std::string Heartbeat::store_unreachable() const {
  return "\n  the store at " + options_.store.server.str() + " did not answer within " +
         std::to_string(static_cast<int>(kStoreSeconds)) + " s" +
         (options_.rank0_hosts_store ? " (rank 0 hosts it: rank 0 has probably stopped or died)"
                                     : "");
}

Heartbeat::~Heartbeat() { stop(); }

void Heartbeat::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Heartbeat::record_departure() {
  std::shared_ptr<TcpStoreClient> client;
  {
    std::lock_guard<std::mutex> lock(store_mutex_);
    client = store_;
  }
  if (!client) return;  // the store is gone (rank 0 hosted it and left): nobody reads it now
  try {
    client->set(key(options_.rank), std::to_string(wall_us()) + " " + kDepartedStatus);
  } catch (const std::exception& error) {
    RF_LOG(kDebug) << "rank " << options_.rank << ": departure not stored: " << error.what();
  }
}

std::string Heartbeat::key(int rank) const {
  return "rf/" + std::to_string(options_.generation) + "/heartbeat/" + std::to_string(rank);
}

void Heartbeat::run() {
  const auto interval = std::chrono::duration<double>(options_.interval_s);
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    if (auto client = store()) {
      try {
        const int64_t now = wall_us();
        client->set(key(options_.rank), std::to_string(now) + " " + status_());
        last_beat_us_ = now;
      } catch (const std::exception& error) {
        // The store stalled or went away (its host shut down first, or stopped): try again
        // next beat on a fresh connection.
        RF_LOG(kDebug) << "rank " << options_.rank << ": heartbeat not stored: " << error.what();
        drop_store(client);
      }
    }
    lock.lock();
    wake_.wait_for(lock, interval, [this] { return stopping_; });
  }
}

std::optional<std::string> Heartbeat::first_failure(const std::string& failure) {
  const std::string base = "rf/" + std::to_string(options_.generation) + "/failure/";
  auto client = store();
  if (!client) return std::nullopt;
  try {
    if (client->add(base + "count", 1) == 1) {
      client->set(base + "first", failure);
      return std::nullopt;
    }
    return client->get(base + "first", Deadline::after_seconds(kStoreSeconds));
  } catch (const std::exception&) {
    drop_store(client);
    return std::nullopt;  // no store: each rank reports what it saw itself
  }
}

std::string Heartbeat::whereabouts() {
  const int64_t now = wall_us();
  const double stale_s = kStaleIntervals * options_.interval_s;
  auto client = store();
  if (!client) return store_unreachable();
  // If this rank's own beats did not get through either (this process was stopped, or the
  // store stalled), old beats of others prove nothing: nobody is called stopped.
  const double own_age_s = (now - last_beat_us_.load()) / 1e6;
  const bool can_judge = own_age_s <= stale_s;
  std::ostringstream stopped;
  std::ostringstream doing;
  const int listed = std::min(options_.size, kMaxListedRanks);
  for (int r = 0; r < listed; ++r) {
    doing << "\n    rank " << r << ": ";
    if (r == options_.rank) {
      doing << status_();
      continue;
    }
    std::string value;
    try {
      value = client->get(key(r), Deadline::after_seconds(0));
    } catch (const Error& error) {
      if (error.kind() != ErrorKind::kTimeout) {
        drop_store(client);
        return store_unreachable();
      }
      doing << "no heartbeat";
      continue;
    }
    const size_t space = value.find(' ');
    char* end = nullptr;
    const long long stamp = std::strtoll(value.c_str(), &end, 10);
    if (end != value.c_str() + std::min(space, value.size())) {
      doing << "unreadable heartbeat";
      continue;
    }
    const double age_s = (now - stamp) / 1e6;
    const std::string status = space == std::string::npos ? "" : value.substr(space + 1);
    char age[32];
    std::snprintf(age, sizeof(age), "%.1f s", age_s);
    if (age_s > stale_s && can_judge && status != kDepartedStatus) {
      stopped << "\n  rank " << r << " stopped answering: its last heartbeat is " << age
              << " old (then: " << status << ")";
      doing << "(" << age << " ago) ";
    }
    doing << status;
  }
  std::string text = stopped.str();
  if (!can_judge) {
    char age[32];
    std::snprintf(age, sizeof(age), "%.1f s", own_age_s);
    text += std::string("\n  (this rank's own last heartbeat is ") + age +
            " old, so it cannot tell which rank stopped answering)";
  }
  text += "\n  what each rank was doing:" + doing.str();
  if (listed < options_.size)
    text += "\n    (ranks from " + std::to_string(listed) + " not listed)";
  return text;
}

}  // namespace rf

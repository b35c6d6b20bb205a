#include "ringflow/engine/engine.h"

#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "ringflow/collectives/select.h"
#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/engine/deadlock.h"
#include "ringflow/engine/fusion.h"
#include "ringflow/engine/settings_check.h"

namespace rf {

namespace {

// How long async submissions may pause and still count as "still arriving" (one Python call
// takes a few microseconds; a pause longer than this means the batch is complete).
constexpr int kArrivalGapUs = 50;
// How long a blocking call polls for the other ranks' round before sleeping in poll().
constexpr int64_t kCallerSpinUs = 50;
// How long after a blocking call the background thread leaves the sockets to callers.
constexpr int kBlindMs = 1;
// How often the background thread inspects stalls while callers drive.
constexpr int kInspectionMs = 100;

// Each rank writes its own trace: rank 0 at the path given, rank r at "<stem>.rank<r><ext>".
std::string timeline_path(const std::string& path, int rank) {
  if (rank == 0) return path;
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  const bool has_ext = dot != std::string::npos && (slash == std::string::npos || dot > slash);
  const std::string suffix = ".rank" + std::to_string(rank);
  return has_ext ? path.substr(0, dot) + suffix + path.substr(dot) : path + suffix;
}

std::string rank_prefix(int rank) { return "rank " + std::to_string(rank) + ": "; }

}  // namespace

Engine::Engine(const RuntimeOptions& options)
    : rank_(options.rank),
      size_(options.size),
      runtime_(std::make_unique<Runtime>(options)),
      timeout_s_(options.timeout_s),
      stall_{env_config().stall_check_s,
             env_config().stall_shutdown_s < 0 ? options.timeout_s : env_config().stall_shutdown_s},
      fusion_threshold_(env_config().fusion_threshold),
      cycle_time_ms_(env_config().cycle_time_ms),
      timeline_(options.rank),
      recorder_(env_config().flight_recorder_entries),
      sends_to_(options.size, 0),
      recvs_from_(options.size, 0),
      joined_(options.size, false),
      cache_(env_config().cache_capacity),
      fusion_buffer_(0),
      sets_(options.size),
      departed_(options.size, false),
      waits_(options.size),
      wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  RF_CHECK(wake_fd_.valid(), kInternal) << "eventfd: " << std::strerror(errno);
  for (int r = 0; r < size_; ++r) live_.push_back(r);
  refresh_peer_fds();
  if (size_ > 1) {
    CollectiveContext ctx{runtime_->transport(), next_tag_++, Deadline::after_seconds(timeout_s_)};
    check_settings_agree(ctx);
  }
  if (!env_config().timeline.empty()) {
    start_timeline(env_config().timeline);
  }
  if (size_ > 1 && env_config().heartbeat_interval_s > 0) {
    HeartbeatOptions beat{runtime_->store_client_options(),  runtime_->generation(), rank_, size_,
                          env_config().heartbeat_interval_s, options.host_store};
    try {
      heartbeat_ = std::make_unique<Heartbeat>(beat, [this] { return status_line(); });
    } catch (const Error& error) {
      RF_LOG(kWarning) << "rank " << rank_ << ": no heartbeat (failures will not say which rank "
                       << "stopped answering): " << error.what();
    }
  }
  thread_ = std::thread([this] { background(); });
}

Engine::~Engine() { close(); }

void Engine::close() {
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    if (closed_) return;
    closed_ = true;
    unusable_.store(true, std::memory_order_release);
  }
  stopping_ = true;
  wake();
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(comm_mutex_);
  fail_all(Error(ErrorKind::kInvalidArgument,
                 rank_prefix(rank_) + "ringflow was shut down before this operation finished"));
  leave();  // unless the engine failed
  if (heartbeat_) {
    heartbeat_->stop();
    std::lock_guard<std::mutex> queue_lock(queue_mutex_);
    // A failed rank's last heartbeat stays as it was: what it was doing when it failed.
    if (!broken_) heartbeat_->record_departure();
  }
  runtime_->close();
  timeline_.stop();
}

void Engine::wake() {
  const uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_.get(), &one, sizeof(one));
  (void)ignored;  // the counter saturating still leaves it readable
}

std::vector<HandlePtr> Engine::submit(std::vector<Submission> batch, bool synchronous) {
  // A group lives in one kind of memory: one that mixes host and CUDA tensors is refused.
  bool any_device = false;
  bool any_host = false;
  for (const Submission& s : batch) (s.device.on_device() ? any_device : any_host) = true;
  // Per thread, kept between calls (submit runs on any thread): its capacity is reused.
  thread_local std::vector<Local> locals;
  locals.clear();
  struct Clear {  // emptied however submit ends: nothing of this call outlives it
    std::vector<Local>& list;
    ~Clear() { list.clear(); }
  } clear_locals{locals};
  for (Submission& submission : batch) {
    Request& request = submission.request;
    request.on_device = submission.device.on_device();
    if (any_device && any_host && request.invalid_reason.empty()) {
      request.invalid_reason = "a grouped call mixes host and CUDA tensors (this one is in " +
                               memory_name(submission.device.device) +
                               "); pass all of them in one kind of memory";
    }
    // Formatted only for an error (a blocking call in a loop passes here every time).
    auto what = [&] {
      return rank_prefix(rank_) + op_kind_name(request.kind) + " of tensor '" + request.name + "'";
    };
    if (request.process_set != kPointToPointSet) {
      std::lock_guard<std::mutex> lock(sets_mutex_);
      RF_CHECK(sets_.contains(request.process_set), kInvalidArgument)
          << what() << ": process set " << request.process_set
          << " does not exist (never added, or removed)";
      const std::vector<int>& members = sets_.ranks(request.process_set);
      RF_CHECK(sets_.index_of(request.process_set, rank_) >= 0, kInvalidArgument)
          << what() << ": this rank is not in process set " << request.process_set << " (ranks " <<
          [&] {
            std::ostringstream text;
            for (size_t i = 0; i < members.size(); ++i) text << (i ? ", " : "") << members[i];
            return text.str();
          }()
          << ")";
      const int set_size = static_cast<int>(members.size());
      if (request.invalid_reason.empty() && request.kind == OpKind::kBroadcast &&
          sets_.index_of(request.process_set, request.root) < 0) {
        request.invalid_reason =
            "root_rank " + std::to_string(request.root) +
            (request.process_set == 0
                 ? " is out of range for " + std::to_string(set_size) + " ranks"
                 : " is not in process set " + std::to_string(request.process_set));
      }
      if (request.invalid_reason.empty() && request.kind == OpKind::kAlltoall &&
          submission.splits.size() != static_cast<size_t>(set_size)) {
        request.invalid_reason = "splits has " + std::to_string(submission.splits.size()) +
                                 " entries, expected one per rank (" + std::to_string(set_size) +
                                 ")";
      }
    }
    Local local;
    local.submission = std::move(submission);
    Request& queued = local.submission.request;
    if (local.submission.device.on_device() && queued.invalid_reason.empty() &&
        queued.shape.size() <= kMaxDims) {
      try {
        stage_device_input(local);
      } catch (const Error& error) {  // told to every rank, like any unusable input
        queued.invalid_reason = error.what();
        local.staging.reset();
      }
    }
    local.own = describe(queued);  // throws for too many dimensions
    local.handle = std::make_shared<Handle>();
    local.handle->process_set = local.own.process_set;
    local.handle->name_hash = local.own.name_hash;
    local.submitted_us = Timeline::now_us();
    locals.push_back(std::move(local));
  }
  std::vector<HandlePtr> handles;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    RF_CHECK(!closed_, kInvalidArgument)
        << rank_prefix(rank_) << "this ringflow runtime was shut down";
    if (broken_) {
      RF_THROW(kPeerFailure) << rank_prefix(rank_)
                             << "ringflow cannot run more operations after an earlier failure: "
                             << broken_->what();
    }
    for (size_t i = 0; i < locals.size(); ++i) {
      const TensorKey key = key_of(locals[i].own);
      bool duplicate = pending_names_.count(key) > 0;
      for (size_t j = 0; j < i; ++j) duplicate = duplicate || key_of(locals[j].own) == key;
      RF_CHECK(!duplicate, kInvalidArgument)
          << rank_prefix(rank_) << op_kind_name(locals[i].submission.request.kind) << " of tensor '"
          << locals[i].submission.request.name
          << "': a request with this name is already pending on this rank (names must be unique "
             "until their operation finishes)";
    }
    for (Local& local : locals) {
      const Request& request = local.submission.request;
      FlightEntry entry;
      entry.kind = op_kind_name(request.kind);
      entry.name = request.name;
      entry.process_set = request.process_set;
      entry.bytes = descriptor_elements(local.own) * dtype_size(request.dtype);
      entry.submitted_us = local.submitted_us;
      local.flight_id = recorder_.submitted(std::move(entry));
      if (spare_names_.empty()) {
        pending_names_.insert(key_of(local.own));
      } else {  // a node settle() kept: no allocation
        spare_names_.back().value() = key_of(local.own);
        pending_names_.insert(std::move(spare_names_.back()));
        spare_names_.pop_back();
      }
      handles.push_back(local.handle);
      queue_.push_back(std::move(local));
    }
  }
  if (!synchronous && sleeping_.load()) wake();
  return handles;
}

void Engine::wait(const HandlePtr& handle) {
  if (handle->done()) return;
  begin_wait(*handle);
  drivers_.fetch_add(1);
  while (!handle->done()) {
    {
      // If the background thread is mid-round, this waits for it; then this thread drives.
      std::lock_guard<std::mutex> lock(comm_mutex_);
      progress_locked(handle.get());
    }
    if (handle->done()) break;
    // The other ranks have not submitted it yet: wait for them to talk. Polling (and yielding
    // the core) a little first catches a round that starts soon without a sleep and wake-up.
    const int64_t spin_until = Timeline::now_us() + kCallerSpinUs;
    bool talked = false;
    while (!talked && Timeline::now_us() < spin_until && !handle->done()) {
      ::sched_yield();
      talked = peers_readable(0);
    }
    if (!talked && !handle->done()) peers_readable(1);
  }
  last_driven_us_.store(Timeline::now_us());
  drivers_.fetch_sub(1);
  end_wait(*handle);
}

bool Engine::peers_readable(int timeout_ms) {
  if (broken()) return false;
  if (runtime_->transport().input_hint()) return true;  // a round began in shared memory
  // Called on every pass of the progress loop, from callers and the background thread: one
  // array per thread, filled when the list changes (a peer left, another engine after a later
  // init()), instead of an allocation per call (poll only writes revents).
  thread_local std::vector<pollfd> fds;
  thread_local uint64_t version = 0;
  const uint64_t current = peer_fds_version_.load(std::memory_order_acquire);
  if (version != current) {
    std::lock_guard<std::mutex> lock(fds_mutex_);
    fds.clear();
    for (int fd : peer_fds_) fds.push_back(pollfd{fd, POLLIN, 0});
    version = current;
  }
  if (fds.empty()) return false;
  return ::poll(fds.data(), fds.size(), timeout_ms) > 0;
}

void Engine::refresh_peer_fds() {
  // Versions are unique in the process, so a later engine never matches an earlier one's list.
  static std::atomic<uint64_t> versions{0};
  std::lock_guard<std::mutex> lock(fds_mutex_);
  peer_fds_.clear();
  for (int r : live_) {
    const int fd = runtime_->transport().peer_fd(r);
    if (r != rank_ && fd >= 0) peer_fds_.push_back(fd);
  }
  peer_fds_version_.store(++versions, std::memory_order_release);
}

bool Engine::broken() {
  // Asked on every pass of the progress loop: a load, not a lock (set with broken_ / closed_).
  return unusable_.load(std::memory_order_acquire);
}

void Engine::start_timeline(const std::string& path) {
  timeline_.start(timeline_path(path, rank_));
}

std::vector<int> Engine::process_set_ranks(int id) {
  std::lock_guard<std::mutex> lock(sets_mutex_);
  return sets_.ranks(id);
}

std::string Engine::next_send_name(int dst) {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  RF_CHECK(dst >= 0 && dst < size_, kInvalidArgument)
      << rank_prefix(rank_) << "send to rank " << dst << ": not a rank of this job";
  return "p2p." + std::to_string(rank_) + ">" + std::to_string(dst) + "#" +
         std::to_string(sends_to_[dst]++);
}

std::string Engine::next_recv_name(int src) {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  RF_CHECK(src >= 0 && src < size_, kInvalidArgument)
      << rank_prefix(rank_) << "recv from rank " << src << ": not a rank of this job";
  return "p2p." + std::to_string(src) + ">" + std::to_string(rank_) + "#" +
         std::to_string(recvs_from_[src]++);
}

EngineStats Engine::stats() {
  std::lock_guard<std::mutex> lock(stats_mutex_);
  return stats_;
}

void Engine::background() {
  auto next_inspection = SteadyClock::now();
  while (!stopping_) {
    wait_for_activity();
    if (stopping_) break;
    // While callers drive, a round a peer began is theirs to join, with the tensor they are
    // about to submit: joining it from here, empty-handed, would cost every rank a round. Nor
    // is the lock taken then (but for the stall inspector, now and then): preempted while
    // holding it, with more ranks than cores, this thread would stall the caller for a slice.
    const bool leave_to_callers = callers_drive() && queue_empty();
    if (leave_to_callers && SteadyClock::now() < next_inspection) continue;
    std::lock_guard<std::mutex> lock(comm_mutex_);
    if (!leave_to_callers) progress_locked();
    if (!table_.empty() && !broken()) {
      next_inspection = SteadyClock::now() + std::chrono::milliseconds(kInspectionMs);
      auto failure = inspect_stalls(table_, stall_, rank_, SteadyClock::now());
      if (failure) poison(Error(ErrorKind::kTimeout, *failure));
    }
    if (channel_ && !channel_->table.empty() && !broken()) {
      auto failure = inspect_stalls(channel_->table, stall_, rank_, SteadyClock::now());
      if (failure) poison(Error(ErrorKind::kTimeout, *failure));
    }
  }
}

bool Engine::callers_drive() const {
  return drivers_.load() > 0 || Timeline::now_us() - last_driven_us_.load() < kBlindMs * 1000;
}

bool Engine::queue_empty() {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  return queue_.empty();
}

void Engine::wait_for_activity() {
  std::vector<pollfd> fds{pollfd{wake_fd_.get(), POLLIN, 0}};
  // While callers drive (blocking calls in a loop), they watch the sockets themselves: waking
  // this thread too would only take a core from them. It looks again within kBlindMs.
  const bool callers_drive = this->callers_drive();
  if (!callers_drive && !broken()) {
    std::lock_guard<std::mutex> lock(fds_mutex_);
    for (int fd : peer_fds_) fds.push_back(pollfd{fd, POLLIN, 0});
  }
  // Waiting tensors need the stall inspector now and then.
  const int timeout_ms = callers_drive ? kBlindMs : waiting_.load() ? 100 : 1000;
  sleeping_ = true;
  bool queued;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    queued = !queue_.empty();
  }
  if (!queued && !stopping_) ::poll(fds.data(), fds.size(), timeout_ms);
  sleeping_ = false;
  uint64_t drained;
  ssize_t ignored = ::read(wake_fd_.get(), &drained, sizeof(drained));
  (void)ignored;
  // Async submissions that are still arriving (a backward pass, a loop of calls) go into the
  // same round, for at most the cycle time; a peer starting a round ends the gathering.
  size_t seen;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    seen = queue_.size();
  }
  if (seen == 0 || cycle_time_ms_ <= 0) return;
  const auto until =
      SteadyClock::now() + std::chrono::microseconds(static_cast<int64_t>(cycle_time_ms_ * 1000));
  std::vector<pollfd> peers(fds.begin() + 1, fds.end());
  while (SteadyClock::now() < until && !stopping_) {
    timespec gap{0, kArrivalGapUs * 1000};
    if (::ppoll(peers.data(), peers.size(), &gap, nullptr) > 0) return;
    std::lock_guard<std::mutex> lock(queue_mutex_);
    if (queue_.size() == seen) return;
    seen = queue_.size();
  }
}

void Engine::progress_locked(const Handle* until) {
  // A caller stops once its own operation is done: a round the others start meanwhile is for
  // their next operation, which this rank's caller will bring along if it returns quickly.
  while (!broken() && !(until && until->done())) {
    bool news;
    {
      std::lock_guard<std::mutex> lock(queue_mutex_);
      news = !queue_.empty();
    }
    if (channel_) {
      news = channel_news();  // set_channels.cc: news for the set's rounds or the job's
    } else {
      news = news || runtime_->transport().has_buffered_input() || peers_readable(0) ||
             waits_overdue();
    }
    if (!news) break;
    try {
      if (channel_) {
        run_channel_round();
      } else {
        run_round();
        update_channel();
      }
    } catch (const Error& error) {
      poison(error);
    } catch (const std::exception& error) {
      // Out of memory and the like: the transport may hold operations into buffers that are
      // gone, so it is aborted like after any I/O failure.
      poison(Error(ErrorKind::kInternal, rank_prefix(rank_) + error.what()));
    }
  }
  const size_t channel_pending = channel_ ? channel_->table.size() : 0;
  waiting_ = !table_.empty() || channel_pending > 0;
  recorder_.set_idle(table_.size() + channel_pending);
}

void Engine::members_of(const Descriptor& d, std::vector<int>& out) {
  if (d.process_set == kPointToPointSet) {
    RF_CHECK(d.root >= 0 && d.root < size_ && d.peer >= 0 && d.peer < size_ && d.root != d.peer,
             kPeerFailure)
        << "received a malformed point-to-point descriptor";
    out.assign({std::min(d.root, d.peer), std::max(d.root, d.peer)});
    return;
  }
  // No sets_mutex_: the table changes only in complete_control, under comm_mutex_, which every
  // caller of this holds (the lock guards the submitting threads' reads).
  RF_CHECK(sets_.contains(d.process_set), kPeerFailure)
      << "a peer announced tensor '" << descriptor_name(d) << "' on process set " << d.process_set
      << ", which this rank does not have (process sets must be added and "
      << "removed on every rank, in the same order)";
  const std::vector<int>& ranks = sets_.ranks(d.process_set);
  out.assign(ranks.begin(), ranks.end());
}

void Engine::run_round(bool leaving) {
  std::vector<Local>& fresh = fresh_;
  Announcement& mine = mine_;
  fresh.clear();
  mine.descriptors.clear();
  mine.cache_ids.clear();
  mine.waits.clear();
  mine.leaving = leaving;
  mine.wants_job_round = false;
  size_t inlined = 0;  // mine.inline_data's elements in use (their buffers are reused)
  // Waits travel with (or after) the submissions made before them: never ahead of one.
  take_queue(fresh, mine);
  // Small allreduces travel with their announcement, up to what Bruck would carry in one go.
  size_t inline_budget = env_config().bruck_max_bytes / std::max(1, size_ - 1);
  std::vector<int>& members = members_scratch_;
  for (Local& local : fresh) {
    const TensorKey key = key_of(local.own);
    members_of(local.own, members);
    if (needs_departed(members)) {
      const Error error = departed_error(op_kind_name(local.submission.request.kind),
                                         local.submission.request.name, members);
      settle(local, &error);
      continue;
    }
    const int index =
        static_cast<int>(std::lower_bound(members.begin(), members.end(), rank_) - members.begin());
    auto id = cache_.lookup(key, index, local.own);
    if (id) {
      mine.cache_ids.push_back(*id);
    } else {
      mine.descriptors.push_back(local.own);
    }
    const Request& request = local.submission.request;
    const size_t bytes = descriptor_elements(local.own) * dtype_size(request.dtype);
    if (request.kind == OpKind::kAllreduce && request.invalid_reason.empty() && !local.staging &&
        bytes <= inline_budget &&
        choose_allreduce(bytes, static_cast<int>(members.size()), shares_memory(members)) ==
            AllreduceAlgorithm::kBruck) {
      const char* data = static_cast<const char*>(local.submission.in);
      if (inlined == mine.inline_data.size()) mine.inline_data.emplace_back();
      mine.inline_data[inlined].key = key;
      mine.inline_data[inlined++].bytes.assign(data, data + bytes);
      inline_budget -= bytes;
    }
    if (spare_locals_.empty()) {
      announced_[key] = std::make_unique<Local>(std::move(local));
    } else {  // a node execute_ready kept, with its Local: no allocation
      auto node = std::move(spare_locals_.back());
      spare_locals_.pop_back();
      node.key() = key;
      *node.mapped() = std::move(local);
      auto placed = announced_.insert(std::move(node));
      if (!placed.inserted) placed.position->second = std::move(placed.node.mapped());
    }
  }
  mine.inline_data.resize(inlined);
  fresh.clear();
  round_tag_ = next_tag_++;
  recorder_.set_activity(leaving ? "leaving the job (shutdown)" : "negotiation round", round_tag_);
  RoundResult& round = round_;
  try {
    exchange_among_live(mine, round);
  } catch (const Error& error) {
    std::ostringstream waiting;
    size_t listed = 0;
    for (const auto& [key, local] : announced_) {
      if (listed++ < 4)
        waiting << (listed > 1 ? ", '" : "'") << local->submission.request.name << "'";
    }
    if (announced_.size() > 4) waiting << " and " << announced_.size() - 4 << " more";
    throw Error(error.kind(), rank_prefix(rank_) + "negotiation round" +
                                  (listed ? " (this rank waits on " + waiting.str() + ")" : "") +
                                  ": " + error.what());
  }
  {
    std::lock_guard<std::mutex> lock(stats_mutex_);
    ++stats_.rounds;
    stats_.negotiation_bytes += round.bytes;
    stats_.cache_hits += mine.cache_ids.size();
  }
  if (leaving) return;  // this rank is gone: it applies and runs nothing more
  apply_announcements(round);
  note_departures(round);
  drop_departed();
  note_waits(round);
  execute_ready(table_.take_ready(joined_));
  prune_waits();
  timeline_.flush();
  if (!env_config().deadlock_check) return;
  if (auto deadlock = find_deadlock(table_, waits_, joined_, rank_)) {
    throw Error(ErrorKind::kMismatch, *deadlock);  // progress_locked poisons the engine
  }
}

void Engine::apply_announcements(const RoundResult& round) {
  const auto now = SteadyClock::now();
  std::vector<int>& members = members_scratch_;
  // Cache ids refer to the cache as it was when the round began: resolve them all before any
  // full descriptor evicts an entry.
  for (int r = 0; r < size_; ++r) {
    for (uint32_t id : round.by_rank[r].cache_ids) {
      const std::vector<Descriptor>& agreed = cache_.entry(id);
      members_of(agreed[0], members);
      auto it = std::lower_bound(members.begin(), members.end(), r);
      RF_CHECK(it != members.end() && *it == r, kPeerFailure)
          << "rank " << r << " announced a cached tensor of a set it is not in";
      const Descriptor& d = agreed[it - members.begin()];
      table_.announce(d, r, members, now);
      if (d.kind == static_cast<uint8_t>(OpKind::kJoin)) joined_[r] = true;
    }
  }
  for (int r = 0; r < size_; ++r) {
    for (const Descriptor& d : round.by_rank[r].descriptors) {
      cache_.erase(key_of(d));  // the request changed (or was never cached)
      members_of(d, members);
      table_.announce(d, r, members, now);
      if (d.kind == static_cast<uint8_t>(OpKind::kJoin)) joined_[r] = true;
    }
  }
  for (int r = 0; r < size_; ++r) {
    for (const InlineData& data : round.by_rank[r].inline_data) {
      table_.attach_inline_data(data.key, r, data.bytes);
    }
  }
}

}  // namespace rf

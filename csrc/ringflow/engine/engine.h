// The engine: owns every byte this process sends. Callers submit requests (any thread, any
// order) and get handles; requests are matched across ranks by name in negotiation rounds,
// ready tensors are fused and run by the collectives, and handles complete.
//
// Who drives: a background thread, woken by async submissions (after gathering those still
// arriving for RINGFLOW_CYCLE_TIME) or by a peer starting a round; or the caller itself, when it
// waits on a handle and nobody else is driving — a synchronous small allreduce then costs two
// exchanges and no thread hand-off. Whoever holds comm_mutex_ drives; rounds are started by
// whichever rank has news, and idle ranks join when their sockets turn readable.
//
// Shutdown (departure.cc): close() announces the departure in a last negotiation round, so
// peers take the closing connections for an orderly leave; what still needs the rank that left
// fails at once, the rest goes on among the ranks still there. Deadlocks (deadlock.h): ranks
// announce the tensors their callers wait on, and waits that can never end fail every rank.
//
// Failure (failure.cc): an I/O error or timeout poisons the engine — peers are told why, every
// pending handle and every later call raises the first error. The error names where the failure
// began (the job's first failure, recorded in the store), the ranks whose heartbeat stopped and
// what each rank was doing (heartbeat.h); the flight recorder is printed or written to a file.
#pragma once

#include <poll.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ringflow/collectives/collective.h"
#include "ringflow/collectives/cuda_ipc_allreduce.h"
#include "ringflow/common/error.h"
#include "ringflow/common/scratch_buffer.h"
#include "ringflow/common/unique_fd.h"
#include "ringflow/engine/announcement.h"
#include "ringflow/engine/device_staging.h"
#include "ringflow/engine/flight_recorder.h"
#include "ringflow/engine/handle.h"
#include "ringflow/engine/heartbeat.h"
#include "ringflow/engine/process_sets.h"
#include "ringflow/engine/response_cache.h"
#include "ringflow/engine/runtime.h"
#include "ringflow/engine/set_channels.h"
#include "ringflow/engine/stall_inspector.h"
#include "ringflow/engine/tensor_table.h"
#include "ringflow/engine/timeline.h"

namespace rf {

// One request as the caller hands it over. Buffers must stay valid until the handle is done.
struct Submission {
  Request request;
  void* in = nullptr;   // the tensor's data (C-contiguous, request.shape and dtype)
  void* out = nullptr;  // allreduce / reducescatter output (== in for in place); else unused
  std::vector<int64_t> splits;  // alltoall: rows to each member of the set
  std::vector<int> set_ranks;   // add_process_set: the new set's ranks (sorted)
  DeviceTensor device;          // CUDA tensors: staged through pinned host memory (in/out unset)
};

struct EngineStats {
  uint64_t rounds = 0;
  uint64_t negotiation_bytes = 0;  // announcement bytes this rank sent
  uint64_t cache_hits = 0;         // tensors announced by cache id
  uint64_t responses = 0;          // operations run (a fused bucket counts once)
  uint64_t inline_allreduces = 0;  // small allreduces reduced from the round's own data
  uint64_t fused_ops = 0;          // operations that carried more than one tensor
  uint64_t fused_tensors = 0;      // tensors that travelled in them
  uint64_t direct_allreduces = 0;  // allreduces that read same-host peers' memory directly
  uint64_t direct_gathers = 0;     // allgathers, broadcasts, reducescatters, alltoalls that did
};

class Engine {
 public:
  explicit Engine(const RuntimeOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Stops the thread, fails pending handles, tells the peers this rank leaves, closes the
  // connections. Idempotent.
  void close();

  int rank() const { return rank_; }
  int size() const { return size_; }
  const Topology& topology() const { return runtime_->topology(); }
  // Per rank, how this rank's frames reach it: "shm", "tcp" or "self" (transport/select.h).
  std::vector<std::string> peer_transports() const {
    std::vector<std::string> kinds;
    for (int r = 0; r < size_; ++r) kinds.emplace_back(runtime_->transport().peer_kind(r));
    return kinds;
  }
  uint32_t generation() const { return runtime_->generation(); }
  uint32_t store_instance() const { return runtime_->store_instance(); }

  // Queues the submissions (one group: announced in the same round). Throws at once for what
  // this rank alone can tell is wrong: a duplicate pending name, a set this rank is not in, a
  // closed or failed engine. `synchronous`: the caller waits right away (no wake-up needed).
  std::vector<HandlePtr> submit(std::vector<Submission> batch, bool synchronous);
  // Returns when the handle is done (driving the engine meanwhile when nobody else is).
  void wait(const HandlePtr& handle);

  std::vector<int> process_set_ranks(int id);
  // Names for point-to-point messages: the n-th message from src to dst, alike on both ends.
  std::string next_send_name(int dst);
  std::string next_recv_name(int src);
  // Rank 0 writes `path`, rank r > 0 "<stem>.rank<r><ext>": one call with one path on every
  // rank (as Horovod scripts do) gives one valid file per rank.
  void start_timeline(const std::string& path);
  void stop_timeline() { timeline_.stop(); }
  EngineStats stats();
  // The flight recorder as JSON (see flight_recorder.h), with the failure if there was one.
  std::string flight_recorder_json();

 private:
  struct Local {
    Submission submission;
    Descriptor own;
    HandlePtr handle;
    int64_t submitted_us = 0;
    uint64_t flight_id = 0;  // this request's flight recorder entry
    bool stand_in = false;   // join.cc: zeros for a rank that has joined
    std::vector<char> zeros;
    std::vector<char> result;
    std::unique_ptr<DeviceStaging> staging;  // CUDA tensors: in / out point into it
  };
  struct Ready {
    PendingTensor tensor;
    Local* local = nullptr;  // null on ranks outside the tensor's set
    int64_t ready_us = 0;
  };

  void background();
  void wake();
  bool broken();  // failed or closed
  // Sleeps until a submission, a peer's round or a stall tick; gathers async submissions
  // still arriving for the cycle time.
  void wait_for_activity();
  bool peers_readable(int timeout_ms);
  bool callers_drive() const;  // blocking calls drive the engine now (or did within kBlindMs)
  bool queue_empty();
  // With comm_mutex_ held: rounds until no rank has news for this one (or `until` is done).
  void progress_locked(const Handle* until = nullptr);
  // `leaving`: this rank's last round (departure.cc); it announces that and applies nothing.
  void run_round(bool leaving = false);
  // departure.cc: this rank's last round, with comm_mutex_ held and nothing left pending.
  void leave();
  // The round's exchange, among the ranks still in the job; by_rank is indexed by job rank.
  void exchange_among_live(const Announcement& mine, RoundResult& out);
  // Records the ranks that announced their departure this round; stops polling their sockets.
  void note_departures(const RoundResult& round);
  // Fails (on this rank) the tensors that need a rank that has left.
  void drop_departed();
  Error departed_error(const std::string& what, const std::string& name,
                       const std::vector<int>& members);
  bool needs_departed(const std::vector<int>& members) const;
  // The sockets to poll for a peer's round: those of the ranks still in the job.
  void refresh_peer_fds();
  // Deadlock detection: callers record the tensor they wait on; rounds carry it (deadlock.h).
  void begin_wait(const Handle& handle);
  void end_wait(const Handle& handle);
  bool waits_overdue();
  // The tensors callers wait on that no round has carried for a while (empty: none overdue).
  std::vector<TensorKey> overdue_waits();
  void note_waits(const RoundResult& round);
  void prune_waits();
  // The ranks of d's set, into `out` (a buffer reused from call to call).
  void members_of(const Descriptor& d, std::vector<int>& out);
  void apply_announcements(const RoundResult& round);
  // set_channels.cc (see set_channels.h). The queued requests (and waits) the round being run
  // announces: the channel's in a channel round, the others in a job-wide one.
  void take_queue(std::vector<Local>& fresh, Announcement& mine);
  // Whether the channel or the job has news for this rank (sets channel_job_news_).
  bool channel_news();
  // A channel round, then a job-wide round when some member asked for one.
  void run_channel_round(bool leaving = false);
  void exchange_in_channel(const Announcement& mine, RoundResult& out);
  // After a job-wide round: the channel this rank should run now (the set table or the live
  // ranks may have changed); an old one is given up.
  void update_channel();
  void abandon_channel();
  // Deadlock detection over the channel's and the job's tables and waits together.
  void check_deadlock_across();
  void swap_channel_state();  // the channel's table, cache, waits and tags for the engine's
  void execute_ready(std::vector<PendingTensor> ready);
  // No data to move: barrier, add/remove_process_set, join.
  void complete_control(Ready& tensor);
  // join.cc: this rank's stand-in request for a tensor it did not submit because it has joined
  // (null when it is not a member), and whether the operation can run with stand-ins at all.
  std::unique_ptr<Local> stand_in_for(const PendingTensor& tensor, int64_t now);
  bool can_stand_in(Ready& item);
  // execute.cc: one operation (a fused bucket or a single tensor) over its set.
  void execute(std::vector<Ready>& bucket, uint64_t tag);
  void execute_inline_allreduce(Ready& tensor);
  void execute_allreduce(std::vector<Ready>& bucket, const CollectiveContext& ctx);
  // Where a set's members live (by set rank), for hierarchical allreduce; says once when uneven.
  // The answer is kept for the next call with the same members (valid until then).
  const HostLayout& set_layout(const std::vector<int>& members, int my_index);
  // Whether the members (job ranks) are on one host (topology) and map each other's collective
  // areas (as shm_direct_possible): every member alike. Kept for the next call, like the layout.
  bool shares_memory(const std::vector<int>& members);
  void execute_allgather(std::vector<Ready>& bucket, const CollectiveContext& ctx);
  void execute_reducescatter(std::vector<Ready>& bucket, const CollectiveContext& ctx);
  void execute_broadcast(Ready& tensor, const CollectiveContext& ctx);
  void execute_alltoall(Ready& tensor, const CollectiveContext& ctx);
  void execute_point_to_point(Ready& tensor, const CollectiveContext& ctx);
  // Frees the tensor's name, then completes (error null) or fails its handle; a CUDA tensor's
  // result is queued back to its device first.
  void settle(Local& local, const Error* error);
  // At submission: a CUDA tensor's staging (the point on the caller's stream to wait for).
  void stage_device_input(Local& local);
  // A bucket of CUDA tensors on the host path: inputs copied to pinned memory, in / out there.
  void stage_bucket_in(std::vector<Ready>& bucket);
  // execute_device.cc: an allreduce of CUDA tensors over CUDA IPC, when every member can; false
  // (on every member alike) when the bucket takes the host path instead.
  bool try_device_allreduce(std::vector<Ready>& bucket, const CollectiveContext& ctx);
  // Fails the engine for good: adds what the store knows (first failure, heartbeats) to the
  // error, tells the peers, fails every handle and reports the flight recorder.
  void poison(const Error& error);
  // `peer`: the rank this rank was waiting on when it failed (-1: none), for the recorder.
  void fail_all(const Error& error, int peer = -1);
  // What this rank is doing now, for heartbeats and the recorder: "<activity>, waiting on rank p".
  std::string status_line() const;
  void report_flight_recorder(const std::string& error, const std::string& now);
  void trace(const Ready& tensor, const char* phase, int64_t start_us, int64_t end_us);
  const char* count_direct_gather(const char* phase);  // any collective but allreduce on areas

  const int rank_;
  const int size_;
  std::unique_ptr<Runtime> runtime_;
  const double timeout_s_;
  const StallOptions stall_;
  const size_t fusion_threshold_;
  const double cycle_time_ms_;
  Timeline timeline_;
  FlightRecorder recorder_;
  // Before every Local: their staging returns buffers to the pool and uses the streams.
  PinnedPool pinned_pool_;
  DeviceStreams device_streams_;
  std::unique_ptr<Heartbeat> heartbeat_;  // null: one rank, RINGFLOW_HEARTBEAT_INTERVAL=0, no store

  // Submissions not yet announced, and this rank's pending names (duplicates are an error).
  std::mutex queue_mutex_;
  std::vector<Local> queue_;
  std::unordered_set<TensorKey, TensorKeyHash> pending_names_;
  // Nodes of pending_names_ that settle() took out, for the next submissions to reuse.
  static constexpr size_t kSpareNodes = 16;
  std::vector<std::unordered_set<TensorKey, TensorKeyHash>::node_type> spare_names_;
  std::optional<Error> broken_;
  bool closed_ = false;
  std::atomic<bool> unusable_{false};  // broken_ or closed_, readable without the lock
  std::vector<uint64_t> sends_to_;     // point-to-point message counters per peer
  std::vector<uint64_t> recvs_from_;
  std::vector<TensorKey> new_waits_;  // tensors callers wait on, not announced yet
  int64_t new_waits_since_us_ = 0;

  // Everything below belongs to whoever holds comm_mutex_.
  std::mutex comm_mutex_;
  std::unordered_map<TensorKey, std::unique_ptr<Local>, TensorKeyHash> announced_;
  // Finished entries of announced_ (node and emptied Local), for run_round to reuse.
  std::vector<std::unordered_map<TensorKey, std::unique_ptr<Local>, TensorKeyHash>::node_type>
      spare_locals_;
  TensorTable table_;
  std::vector<bool> joined_;  // ranks that called join() and wait for the others
  ResponseCache cache_;
  ScratchBuffer fusion_buffer_;
  bool told_uneven_ = false;  // the flat fallback for uneven hosts was logged
  // Per member list: the CUDA buffers they map from each other (or that they cannot).
  std::map<std::vector<int>, std::unique_ptr<IpcPeerBuffers>> ipc_peers_;
  uint64_t next_tag_ = 1;
  uint64_t round_tag_ = 0;  // the tag of the round being applied (inline allreduces run in it)
  std::mutex sets_mutex_;   // also read by submitting threads
  ProcessSetTable sets_;
  std::vector<bool> departed_;  // ranks that shut down (announced in a round)
  std::vector<int> live_;       // the ranks still in the job, this one included: rounds run here
  std::vector<std::vector<TensorKey>> waits_;  // by rank: the pending tensors its callers wait on
  std::unique_ptr<SetChannel> channel_;        // null: job-wide rounds only (set_channels.h)
  uint64_t channel_sets_version_ = 0;          // the set table's version it was chosen for
  size_t channel_live_ = 0;                    // and the number of live ranks
  bool channel_round_ = false;                 // run_round is running the channel's round
  bool channel_job_news_ = false;              // this rank wants a job-wide round next
  bool channel_wants_job_ = false;             // some member asked for one this round
  bool channel_abandon_ = false;               // a member leaves: give the channel up
  std::vector<pollfd> channel_pfds_;           // the sockets of the channel's other members
  std::vector<pollfd> outside_pfds_;           // and of the live ranks outside it

  // Scratch of run_round (never nested), kept so that a loop of small calls reuses capacity.
  std::vector<Local> fresh_;
  Announcement mine_;
  RoundResult round_;
  std::vector<int> members_scratch_;
  std::vector<Ready> ready_items_;  // execute_ready's
  // set_layout's last answer: every call of a loop asks it for the same set.
  std::vector<int> layout_members_;
  int layout_index_ = -1;
  HostLayout layout_;
  std::vector<int> shared_members_;
  bool shared_ = false;

  std::mutex stats_mutex_;
  EngineStats stats_;

  // The sockets of the ranks still in the job (the transport itself is not shared between
  // threads); readers keep a copy and refresh it when the version changes.
  std::mutex fds_mutex_;
  std::vector<int> peer_fds_;
  std::atomic<uint64_t> peer_fds_version_{0};
  std::atomic<bool> waiting_{false};  // tensors wait for other ranks: the stall inspector ticks
  UniqueFd wake_fd_;                  // eventfd: async submissions wake the background thread
  std::atomic<bool> sleeping_{false};
  std::atomic<int> drivers_{0};  // callers inside wait(); the thread leaves peers to them
  std::atomic<int64_t> last_driven_us_{0};  // when the last caller left wait()
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace rf

// Process sets: sub-groups of the job's ranks that run collectives among themselves. Every rank
// keeps the same table (sets are added and removed by negotiated operations, in the same order
// everywhere); set 0 is the whole job. A collective on a set runs over a SubsetTransport, which
// renumbers the members 0 … k-1 so the algorithms need not know about sets at all.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "ringflow/transport/transport.h"

namespace rf {

class ProcessSetTable {
 public:
  explicit ProcessSetTable(int world_size);
  // ranks must be sorted, unique and within the world; returns the new set's id.
  int add(const std::vector<int>& ranks);
  void remove(int id);
  bool contains(int id) const { return sets_.count(id) > 0; }
  // Throws kInvalidArgument for an unknown set.
  const std::vector<int>& ranks(int id) const;
  // Index of `rank` in the set, or -1.
  int index_of(int id, int rank) const;
  const std::map<int, std::vector<int>>& all() const { return sets_; }
  // Changes with every add and remove (set_channels.cc looks again only then).
  uint64_t version() const { return version_; }

 private:
  std::map<int, std::vector<int>> sets_;
  int next_id_ = 1;
  uint64_t version_ = 0;
};

// A view of `parent` restricted to `members` (global ranks, sorted): peer i is members[i].
class SubsetTransport : public Transport {
 public:
  SubsetTransport(Transport& parent, const std::vector<int>& members, int my_index)
      : parent_(parent), members_(members), my_index_(my_index) {}
  int rank() const override { return my_index_; }
  int size() const override { return static_cast<int>(members_.size()); }
  uint64_t post_send(int peer, const void* data, size_t len, uint64_t tag) override {
    return parent_.post_send(members_[peer], data, len, tag);
  }
  void wait_send(int peer, uint64_t ticket, const Deadline& deadline) override {
    parent_.wait_send(members_[peer], ticket, deadline);
  }
  uint64_t post_recv(int peer, void* data, size_t len, uint64_t tag,
                     size_t* actual_len = nullptr) override {
    return parent_.post_recv(members_[peer], data, len, tag, actual_len);
  }
  void wait_recv(int peer, uint64_t ticket, const Deadline& deadline) override {
    parent_.wait_recv(members_[peer], ticket, deadline);
  }
  void wait_all(const Deadline& deadline) override { parent_.wait_all(deadline); }
  std::vector<int> peer_fds() const override { return parent_.peer_fds(); }
  int peer_fd(int peer) const override { return parent_.peer_fd(members_[peer]); }
  bool has_buffered_input() const override { return parent_.has_buffered_input(); }
  bool has_buffered_input_from(int peer) const override {
    return parent_.has_buffered_input_from(members_[peer]);
  }
  shm::CollectiveAreas* collective_areas() override { return parent_.collective_areas(); }
  int job_rank(int peer) const override { return parent_.job_rank(members_[peer]); }
  void abort(const std::string& reason) noexcept override { parent_.abort(reason); }

 private:
  Transport& parent_;
  std::vector<int> members_;
  int my_index_;
};

}  // namespace rf

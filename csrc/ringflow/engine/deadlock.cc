#include "ringflow/engine/deadlock.h"

#include <set>
#include <sstream>
#include <tuple>

namespace rf {

namespace {

std::string rank_list(const std::vector<int>& ranks) {
  std::ostringstream text;
  text << (ranks.size() == 1 ? "rank " : "ranks ");
  for (size_t i = 0; i < ranks.size(); ++i) {
    text << (i == 0 ? "" : i + 1 == ranks.size() ? " and " : ", ") << ranks[i];
  }
  return text.str();
}

const Descriptor& first_announced(const PendingTensor& tensor) {
  size_t i = 0;
  while (i + 1 < tensor.announced.size() && !tensor.announced[i]) ++i;
  return tensor.by_member[i];
}

// The ranks that must still submit before `tensor` can run: its own missing ranks, or those of
// its whole group (a grouped tensor runs with its group). Joined ranks stand in, except for join.
std::vector<int> still_missing(const TensorTable& table, const PendingTensor& tensor,
                               const std::vector<bool>& joined) {
  std::set<int> ranks;
  auto add = [&](const PendingTensor& t) {
    for (int r : t.missing_ranks()) {
      if (t.kind == OpKind::kJoin || !joined[r]) ranks.insert(r);
    }
  };
  const Descriptor& d = first_announced(tensor);
  if (d.group_size > 1) {
    auto group = [](const Descriptor& x) {
      return std::make_tuple(x.process_set, x.kind, x.group_hash);
    };
    for (const auto& [order, other] : table.pending()) {
      if (group(first_announced(other)) == group(d)) add(other);
    }
  } else {
    add(tensor);
  }
  return {ranks.begin(), ranks.end()};
}

}  // namespace

std::optional<std::string> find_deadlock(const TensorTable& table,
                                         const std::vector<std::vector<TensorKey>>& waits,
                                         const std::vector<bool>& joined, int rank) {
  int waiting = 0;  // checked here too: most rounds end here, without building the list
  for (const std::vector<TensorKey>& keys : waits) waiting += keys.empty() ? 0 : 1;
  if (waiting < 2) return std::nullopt;
  return find_deadlock(std::vector<const TensorTable*>{&table}, waits, joined, rank);
}

std::optional<std::string> find_deadlock(const std::vector<const TensorTable*>& tables,
                                         const std::vector<std::vector<TensorKey>>& waits,
                                         const std::vector<bool>& joined, int rank) {
  const int size = static_cast<int>(waits.size());
  int waiting = 0;  // it takes two (a rank never waits on a tensor only it must submit)
  for (const std::vector<TensorKey>& keys : waits) waiting += keys.empty() ? 0 : 1;
  if (waiting < 2) return std::nullopt;
  // For each waiting rank, what each of its waited tensors still misses.
  std::vector<std::vector<const PendingTensor*>> waited(size);
  std::vector<std::vector<std::vector<int>>> missing(size);
  std::vector<bool> stuck(size, false);
  for (int r = 0; r < size; ++r) {
    for (const TensorKey& key : waits[r]) {
      for (const TensorTable* table : tables) {
        const PendingTensor* tensor = table->find(key);
        if (!tensor) continue;
        waited[r].push_back(tensor);
        missing[r].push_back(still_missing(*table, *tensor, joined));
        break;
      }
    }
    stuck[r] = !waited[r].empty();
  }
  // Shrink to the largest set in which every waited tensor misses a stuck rank.
  for (bool changed = true; changed;) {
    changed = false;
    for (int r = 0; r < size; ++r) {
      if (!stuck[r]) continue;
      for (const std::vector<int>& ranks : missing[r]) {
        bool needs_stuck = false;
        for (int m : ranks) needs_stuck = needs_stuck || stuck[m];
        if (!needs_stuck) {
          stuck[r] = false;
          changed = true;
          break;
        }
      }
    }
  }
  std::vector<int> ranks;
  for (int r = 0; r < size; ++r) {
    if (stuck[r]) ranks.push_back(r);
  }
  if (ranks.empty()) return std::nullopt;
  std::ostringstream text;
  text << "rank " << rank << ": deadlock: " << rank_list(ranks)
       << (ranks.size() == 1 ? " waits in a call" : " wait in calls")
       << " that can never complete, each needing a rank that waits in another call:";
  for (int r : ranks) {
    for (size_t i = 0; i < waited[r].size(); ++i) {
      text << " rank " << r << " waits in " << op_kind_name(waited[r][i]->kind) << " of '"
           << waited[r][i]->name << "' (not submitted by " << rank_list(missing[r][i]) << ");";
    }
  }
  text << " every rank must call the same collectives in the same order";
  return text.str();
}

}  // namespace rf

#include "ringflow/engine/settings_check.h"

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "ringflow/common/check.h"
#include "ringflow/common/env.h"

namespace rf {

namespace {

struct Setting {
  const char* variable;
  uint64_t value;
};

uint64_t choice_code(const std::string& choice) {
  // Short enough to pack: "auto", "ring", "bruck", "binomial", "chain", "direct", "pairwise", "on",
  // "off".
  uint64_t code = 0;
  std::memcpy(&code, choice.data(), std::min<size_t>(choice.size(), sizeof(code)));
  return code;
}

std::string show(const Setting& setting) {
  const std::string name = setting.variable;
  if (name.find("ALGORITHM") != std::string::npos || name == "RINGFLOW_HIERARCHICAL") {
    char text[sizeof(uint64_t) + 1] = {};
    std::memcpy(text, &setting.value, sizeof(uint64_t));
    return text;
  }
  if (name == "RINGFLOW_JOIN_AVERAGE") return setting.value ? "contributors" : "size";
  return std::to_string(setting.value);
}

std::vector<Setting> plan_settings() {
  const EnvConfig& env = env_config();
  return {
      {"RINGFLOW_FUSION_THRESHOLD", env.fusion_threshold},
      {"RINGFLOW_CACHE_CAPACITY", env.cache_capacity},
      {"RINGFLOW_BRUCK_MAX_BYTES", env.bruck_max_bytes},
      {"RINGFLOW_DIRECT_MIN_BYTES", static_cast<uint64_t>(env.direct_min_bytes)},
      {"RINGFLOW_ALLREDUCE_ALGORITHM", choice_code(env.allreduce_algorithm)},
      {"RINGFLOW_BROADCAST_ALGORITHM", choice_code(env.broadcast_algorithm)},
      {"RINGFLOW_ALLGATHER_ALGORITHM", choice_code(env.allgather_algorithm)},
      {"RINGFLOW_REDUCESCATTER_ALGORITHM", choice_code(env.reducescatter_algorithm)},
      {"RINGFLOW_ALLTOALL_ALGORITHM", choice_code(env.alltoall_algorithm)},
      {"RINGFLOW_CHAIN_MIN_BYTES", env.chain_min_bytes},
      {"RINGFLOW_SEGMENT_BYTES", env.segment_bytes},
      {"RINGFLOW_HIERARCHICAL", choice_code(env.hierarchical)},
      {"RINGFLOW_CUDA_IPC_BYTES", env.cuda_ipc_bytes},
      {"RINGFLOW_DEADLOCK_CHECK", env.deadlock_check ? 1u : 0u},
      {"RINGFLOW_SET_CHANNELS", env.set_channels ? 1u : 0u},
      {"RINGFLOW_JOIN_AVERAGE", env.join_average_contributors ? 1u : 0u},
  };
}

}  // namespace

void check_settings_agree(const CollectiveContext& ctx) {
  const std::vector<Setting> mine = plan_settings();
  std::vector<uint64_t> values;
  for (const Setting& s : mine) values.push_back(s.value);
  const size_t bytes = values.size() * sizeof(uint64_t);
  GatherBlock block;
  block.payload = reinterpret_cast<const char*>(values.data());
  block.payload_bytes = bytes;
  GatheredBlocks all;
  bruck_allgather(ctx, block, [bytes](const char*) { return bytes; }, &all);
  for (size_t i = 0; i < mine.size(); ++i) {
    std::ostringstream differing;
    bool differ = false;
    for (int r = 0; r < ctx.size(); ++r) {
      Setting theirs = mine[i];
      std::memcpy(&theirs.value, all.payloads[r].data() + i * sizeof(uint64_t), sizeof(uint64_t));
      differ = differ || theirs.value != mine[i].value;
      differing << (r ? ", " : "") << "rank " << r << " " << show(theirs);
    }
    RF_CHECK(!differ, kMismatch)
        << "rank " << ctx.rank() << ": init(): " << mine[i].variable << " differs between ranks ("
        << differing.str()
        << "); it shapes how every rank plans operations and must be set alike everywhere";
  }
}

}  // namespace rf

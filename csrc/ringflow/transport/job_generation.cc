#include "ringflow/transport/job_generation.h"

#include <string>

#include "ringflow/common/check.h"

namespace rf {

uint32_t agree_generation(Store& store, int rank, int size, const Deadline& deadline) {
  const std::string sized = "rf/round/" + std::to_string(size) + "/";
  int64_t round = store.add(sized + "open", 0);  // adding 0 reads the counter
  while (true) {
    const std::string base = sized + std::to_string(round) + "/";
    if (store.add(base + "rank/" + std::to_string(rank), 1) > 1) {
      break;  // this rank arrived in this round before (an init that failed): same place
    }
    const int64_t arrived = store.add(base + "arrived", 1);
    if (arrived > size) {
      ++round;  // the round filled before this rank arrived: it belongs to the next one
      continue;
    }
    if (arrived == 1) {
      store.set(base + "generation", std::to_string(store.add("rf/generations", 1) - 1));
    }
    if (arrived == size) store.add(sized + "open", 1);
    break;
  }
  const std::string value = store.get(sized + std::to_string(round) + "/generation", deadline);
  try {
    return static_cast<uint32_t>(std::stoul(value));
  } catch (const std::exception&) {
    RF_THROW(kPeerFailure) << "the store holds a malformed generation '" << value << "'";
  }
}

}  // namespace rf

#include "ringflow/transport/select.h"

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "ringflow/common/check.h"
#include "ringflow/common/env.h"
#include "ringflow/common/log.h"
#include "ringflow/net/socket.h"
#include "ringflow/transport/shm/collective_area.h"
#include "ringflow/transport/shm/segment.h"
#include "ringflow/transport/shm/shm_transport.h"
#include "ringflow/transport/tcp/tcp_transport.h"

namespace rf {

namespace {

constexpr uint32_t kProbeMagic = 0x52465348;  // "RFSH"

// Round 1: where this rank is and what it wants.
struct HostProbe {
  uint32_t magic = kProbeMagic;
  uint32_t wants_shm = 0;
  char boot_id[48] = {};
  uint64_t shm_dev = 0;
  uint64_t shm_ino = 0;
  uint64_t ring_bytes = 0;
};
// Round 2: this rank's segment, for a peer that passed round 1.
struct SegmentOffer {
  uint32_t offered = 0;
  char path[128] = {};
  uint64_t nonce = 0;
  uint64_t bytes = 0;
};
// Round 3: whether this rank mapped the peer's segment (and read its nonce back).
struct MapAnswer {
  uint32_t mapped = 0;
  char why[236] = {};
};

HostProbe local_probe(bool wants_shm) {
  HostProbe probe;
  probe.wants_shm = wants_shm ? 1 : 0;
  probe.ring_bytes = env_config().shm_ring_bytes;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  struct stat info{};
  if (std::getline(boot, id) && ::stat("/dev/shm", &info) == 0) {
    std::strncpy(probe.boot_id, id.c_str(), sizeof(probe.boot_id) - 1);
    probe.shm_dev = info.st_dev;
    probe.shm_ino = info.st_ino;
  }
  return probe;
}

// Each rank sends its message to every peer, then reads every peer's: all are small, so the
// sends never wait for the reads.
template <typename Message>
std::vector<Message> exchange(const std::vector<UniqueFd>& sockets, const std::vector<Message>& out,
                              const Deadline& deadline) {
  std::vector<Message> in(sockets.size());
  for (size_t p = 0; p < sockets.size(); ++p) {
    if (sockets[p].valid()) {
      net::send_all(sockets[p].get(), &out[p], sizeof(Message), deadline, "transport probe");
    }
  }
  for (size_t p = 0; p < sockets.size(); ++p) {
    if (sockets[p].valid()) {
      net::recv_all(sockets[p].get(), &in[p], sizeof(Message), deadline, "transport probe");
    }
  }
  return in;
}

std::string differs(const HostProbe& mine, const HostProbe& theirs) {
  if (!mine.wants_shm || !theirs.wants_shm) return "RINGFLOW_TRANSPORT=tcp on one side";
  if (theirs.magic != kProbeMagic) return "the peer sent a malformed probe";
  if (!mine.boot_id[0] || std::strncmp(mine.boot_id, theirs.boot_id, sizeof(mine.boot_id)) != 0) {
    return "another host (boot ids differ)";
  }
  if (mine.shm_dev != theirs.shm_dev || mine.shm_ino != theirs.shm_ino) {
    return "another /dev/shm (a different mount namespace)";
  }
  if (mine.ring_bytes != theirs.ring_bytes) return "RINGFLOW_SHM_RING_BYTES differs";
  return "";
}

}  // namespace

std::unique_ptr<Transport> make_transport(int rank, std::vector<UniqueFd> sockets, SpinOptions spin,
                                          const Deadline& deadline,
                                          std::vector<std::vector<UniqueFd>> stripes) {
  const int size = static_cast<int>(sockets.size());
  const TransportKind kind = env_config().transport;
  if (size <= 1) return std::make_unique<TcpTransport>(rank, std::move(sockets), spin);
  // Every rank probes, even one forced to TCP: its peers read its answer.
  const HostProbe me = local_probe(kind != TransportKind::kTcp);
  const auto probes = exchange(sockets, std::vector<HostProbe>(size, me), deadline);
  std::vector<std::string> why(size);
  std::vector<int> candidates;
  for (int p = 0; p < size; ++p) {
    if (p == rank) continue;
    why[p] = differs(me, probes[p]);
    if (why[p].empty()) candidates.push_back(p);
  }

  shm::Segment segment;
  struct Unlink {  // also when a peer fails mid-probe
    shm::Segment* segment;
    ~Unlink() { shm::unlink_segment(segment); }
  } unlink{&segment};
  std::vector<SegmentOffer> offers(size);
  if (!candidates.empty()) {
    std::string failure;
    const size_t area = env_config().shm_area_bytes == 0
                            ? 0
                            : shm::collective_area_bytes(size, env_config().shm_area_bytes);
    bool created =
        shm::create_segment(rank, size, candidates, me.ring_bytes, area, &segment, &failure);
    if (!created && area > 0) {
      // The rings alone may still fit: the direct collectives are only faster, not needed.
      created = shm::create_segment(rank, size, candidates, me.ring_bytes, 0, &segment, &failure);
      if (created) {
        RF_LOG(kWarning) << "rank " << rank << ": /dev/shm has no room for the " << area
                         << "-byte collective area (RINGFLOW_SHM_AREA_BYTES); same-host "
                            "allreduce goes around the rings";
      }
    }
    if (created) {
      for (int p : candidates) {
        offers[p].offered = 1;
        std::strncpy(offers[p].path, segment.path.c_str(), sizeof(offers[p].path) - 1);
        offers[p].nonce = segment.header()->nonce;
        offers[p].bytes = segment.mapping.size();
      }
    } else {
      for (int p : candidates) why[p] = failure;
      if (kind == TransportKind::kAuto) {
        RF_LOG(kWarning) << "rank " << rank << ": " << failure << "; using TCP for same-host peers";
      }
    }
  }
  const auto received = exchange(sockets, offers, deadline);

  std::vector<shm::Segment> theirs(size);
  std::vector<MapAnswer> answers(size);
  for (int p : candidates) {
    std::string failure = !offers[p].offered     ? why[p]
                          : !received[p].offered ? "the peer has no shared-memory segment"
                                                 : "";
    if (failure.empty()) {
      std::string path(received[p].path, strnlen(received[p].path, sizeof(received[p].path)));
      shm::open_segment(path, received[p].bytes, received[p].nonce, &theirs[p], &failure);
    }
    answers[p].mapped = theirs[p].mapping.valid() ? 1 : 0;
    std::strncpy(answers[p].why, failure.c_str(), sizeof(answers[p].why) - 1);
    why[p] = failure;
  }
  const auto peer_answers = exchange(sockets, answers, deadline);
  // Every peer has answered: those that map it have. A killed job leaves nothing in /dev/shm.
  shm::unlink_segment(&segment);

  bool any = false;
  for (int p : candidates) {
    if (answers[p].mapped && peer_answers[p].mapped) {
      any = true;
      continue;
    }
    if (why[p].empty()) {
      why[p] = std::string(peer_answers[p].why,
                           strnlen(peer_answers[p].why, sizeof(peer_answers[p].why)));
      why[p] = "rank " + std::to_string(p) + " could not map this rank's segment: " + why[p];
    }
    theirs[p].mapping.reset();
  }
  if (kind == TransportKind::kShm) {
    for (int p = 0; p < size; ++p) {
      RF_CHECK(p == rank || theirs[p].mapping.valid(), kInvalidArgument)
          << "RINGFLOW_TRANSPORT=shm: rank " << rank << " cannot share memory with rank " << p
          << ": " << why[p];
    }
  }
  if (!any)
    return std::make_unique<TcpTransport>(rank, std::move(sockets), spin, std::move(stripes));
  return std::make_unique<shm::ShmTransport>(rank, std::move(sockets), std::move(segment),
                                             std::move(theirs), spin, std::move(stripes));
}

}  // namespace rf

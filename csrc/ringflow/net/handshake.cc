#include "ringflow/net/handshake.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <array>
#include <cstring>
#include <sstream>
#include <vector>

#include "ringflow/common/check.h"
#include "ringflow/net/socket.h"

namespace rf::net {

namespace {

constexpr size_t kNonceBytes = 32;
constexpr size_t kProofBytes = 32;
using Nonce = std::array<uint8_t, kNonceBytes>;
using Proof = std::array<uint8_t, kProofBytes>;

// Fixed-size part of a hello, sent in little-endian field order (x86/ARM hosts; a big-endian
// peer fails the magic check rather than misreading).
#pragma pack(push, 1)
struct HelloHeader {
  uint32_t magic;
  uint16_t version;
  uint8_t role;
  uint8_t reserved;
  int32_t rank;
  uint32_t generation;
  uint16_t job_id_len;
  uint8_t nonce[kNonceBytes];
};
#pragma pack(pop)

void append(std::vector<uint8_t>& out, const void* data, size_t len) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  out.insert(out.end(), bytes, bytes + len);
}

// What a side's proof covers: its own identity, then the peer's nonce, then its own.
Proof make_proof(const std::string& secret, const Identity& sender, const Nonce& peer_nonce,
                 const Nonce& own_nonce) {
  static const char kLabel[] = "ringflow-handshake-v1";
  std::vector<uint8_t> message;
  append(message, kLabel, sizeof(kLabel) - 1);
  uint8_t role = static_cast<uint8_t>(sender.role);
  append(message, &role, 1);
  append(message, &sender.rank, sizeof(sender.rank));
  append(message, &sender.generation, sizeof(sender.generation));
  append(message, sender.job_id.data(), sender.job_id.size());
  append(message, peer_nonce.data(), peer_nonce.size());
  append(message, own_nonce.data(), own_nonce.size());
  Proof proof{};
  unsigned int proof_len = 0;
  const uint8_t* mac = ::HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
                              message.data(), message.size(), proof.data(), &proof_len);
  RF_CHECK(mac != nullptr && proof_len == kProofBytes, kInternal) << "HMAC-SHA256 failed";
  return proof;
}

Verdict check_hello(const HelloHeader& hello, const std::string& job_id, const Identity& me,
                    Role expected_role, std::string* reason) {
  std::ostringstream why;
  if (hello.magic != kMagic) {
    why << "not a ringflow endpoint (magic 0x" << std::hex << hello.magic << ")";
  } else if (hello.version != kProtocolVersion) {
    why << "speaks protocol version " << hello.version << ", this side speaks " << kProtocolVersion;
  } else if (hello.role != static_cast<uint8_t>(expected_role)) {
    why << "has role " << int(hello.role) << ", expected " << int(expected_role);
  } else if (job_id != me.job_id) {
    why << "belongs to job '" << job_id << "', this is job '" << me.job_id << "'";
  } else {
    return Verdict::kAccepted;
  }
  *reason = why.str();
  return Verdict::kBadHello;
}

}  // namespace

HandshakeResult handshake(int fd, const Identity& me, Role expected_peer_role,
                          const std::string& secret, const PeerCheck& check,
                          const Deadline& deadline) {
  RF_CHECK(me.job_id.size() <= kMaxJobIdBytes, kInvalidArgument)
      << "job id is longer than " << kMaxJobIdBytes << " bytes";
  Nonce own_nonce{};
  RF_CHECK(::RAND_bytes(own_nonce.data(), kNonceBytes) == 1, kInternal) << "RAND_bytes failed";

  HelloHeader hello{};
  hello.magic = kMagic;
  hello.version = kProtocolVersion;
  hello.role = static_cast<uint8_t>(me.role);
  hello.rank = me.rank;
  hello.generation = me.generation;
  hello.job_id_len = static_cast<uint16_t>(me.job_id.size());
  std::memcpy(hello.nonce, own_nonce.data(), kNonceBytes);
  std::vector<uint8_t> out;
  append(out, &hello, sizeof(hello));
  append(out, me.job_id.data(), me.job_id.size());
  send_all(fd, out.data(), out.size(), deadline, "handshake hello");

  HelloHeader theirs{};
  recv_all(fd, &theirs, sizeof(theirs), deadline, "handshake hello");
  HandshakeResult result;
  result.verdict = Verdict::kAccepted;
  if (theirs.magic != kMagic || theirs.job_id_len > kMaxJobIdBytes) {
    // Don't read an attacker-chosen length from something that isn't even a ringflow hello.
    result.verdict = Verdict::kBadHello;
    std::ostringstream why;
    why << "not a ringflow endpoint (magic 0x" << std::hex << theirs.magic << ")";
    result.reason = why.str();
    return result;
  }
  std::string their_job(theirs.job_id_len, '\0');
  recv_all(fd, their_job.data(), their_job.size(), deadline, "handshake hello");
  result.peer.role = static_cast<Role>(theirs.role);
  result.peer.rank = theirs.rank;
  result.peer.generation = theirs.generation;
  result.peer.job_id = their_job;
  Nonce their_nonce{};
  std::memcpy(their_nonce.data(), theirs.nonce, kNonceBytes);

  Proof own_proof = make_proof(secret, me, their_nonce, own_nonce);
  send_all(fd, own_proof.data(), kProofBytes, deadline, "handshake proof");
  Proof their_proof{};
  recv_all(fd, their_proof.data(), kProofBytes, deadline, "handshake proof");

  // Judge the peer: hello fields, then the proof, then the caller's own check.
  Verdict mine = check_hello(theirs, their_job, me, expected_peer_role, &result.reason);
  if (mine == Verdict::kAccepted) {
    Proof expected = make_proof(secret, result.peer, own_nonce, their_nonce);
    if (CRYPTO_memcmp(expected.data(), their_proof.data(), kProofBytes) != 0) {
      mine = Verdict::kBadProof;
      result.reason = "failed authentication (different RINGFLOW_SECRET?)";
    }
  }
  if (mine == Verdict::kAccepted && check) mine = check(result.peer, &result.reason);
  uint8_t mine_byte = static_cast<uint8_t>(mine);
  send_all(fd, &mine_byte, 1, deadline, "handshake verdict");
  uint8_t theirs_byte = 0;
  if (mine != Verdict::kAccepted) {
    // Refused either way. Their verdict is read only so that ours reaches them before the
    // close; an intruder that never sends it (or hangs up) must not hide why it was refused.
    try {
      recv_all(fd, &theirs_byte, 1, deadline, "handshake verdict");
    } catch (const Error&) {
    }
    result.verdict = mine;
    return result;
  }
  recv_all(fd, &theirs_byte, 1, deadline, "handshake verdict");
  if (theirs_byte != static_cast<uint8_t>(Verdict::kAccepted)) {
    result.verdict = theirs_byte <= 3 ? static_cast<Verdict>(theirs_byte) : Verdict::kBadHello;
    result.reason = result.verdict == Verdict::kBadProof
                        ? "the other side refused our authentication (different RINGFLOW_SECRET?)"
                    : result.verdict == Verdict::kRefused
                        ? "the other side refused the connection (stale generation or duplicate)"
                        : "the other side refused our hello (wrong job id or protocol version)";
  }
  return result;
}

}  // namespace rf::net

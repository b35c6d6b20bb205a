#include "ringflow/store/tcp_store_client.h"

#include <algorithm>
#include <sstream>
#include <thread>

#include "ringflow/common/check.h"
#include "ringflow/net/handshake.h"
#include "ringflow/store/store_protocol.h"

namespace rf {

namespace sp = store_protocol;

namespace {
// A kTimeout the server sent as its answer: the connection is still in step.
bool answered_timeout(const Error& error) {
  return error.kind() == ErrorKind::kTimeout &&
         std::string(error.what()).find("waiting for store keys") != std::string::npos;
}
}  // namespace

template <typename Request>
auto TcpStoreClient::locked_request(Request request) {
  std::lock_guard<std::mutex> lock(mutex_);
  try {
    return request();
  } catch (const Error& error) {
    if (!answered_timeout(error)) fd_.reset();
    throw;
  }
}

TcpStoreClient::TcpStoreClient(StoreClientOptions options, const Deadline& deadline)
    : options_(std::move(options)) {
  net::Identity me{net::Role::kStoreClient, options_.rank, options_.used_store, options_.job_id};
  std::string last_error = "no attempt";
  auto backoff = std::chrono::milliseconds(5);
  while (true) {
    try {
      UniqueFd fd = net::connect_tcp(options_.server, deadline);
      auto result =
          net::handshake(fd.get(), me, net::Role::kStoreServer, options_.secret, nullptr, deadline);
      if (result.verdict == net::Verdict::kAccepted) {
        fd_ = std::move(fd);
        server_instance_ = result.peer.generation;
        return;
      }
      last_error = result.reason;
      RF_CHECK(result.verdict == net::Verdict::kRefused, kPeerFailure)
          << "rank " << options_.rank << ": store at " << options_.server.str()
          << " refused the connection: " << result.reason;
    } catch (const Error& error) {
      if (error.kind() != ErrorKind::kPeerFailure && error.kind() != ErrorKind::kTimeout) throw;
      if (std::string(error.what()).find("refused the connection: ") != std::string::npos) throw;
      last_error = error.what();
    }
    // The server is not listening yet (rank 0 still starting) or is an earlier init's store;
    // retrying a connect is the one place where ringflow waits by sleeping.
    RF_CHECK(!deadline.expired(), kTimeout)
        << "rank " << options_.rank << ": could not reach the store at " << options_.server.str()
        << " before the deadline (last error: " << last_error << ")";
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, std::chrono::milliseconds(200));
  }
}

int TcpStoreClient::fd() const {
  RF_CHECK(fd_.valid(), kPeerFailure)
      << "the connection to the store at " << options_.server.str()
      << " is closed (closed by this rank, or lost after an I/O error)";
  return fd_.get();
}

void TcpStoreClient::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  fd_.reset();
}

std::string TcpStoreClient::local_ip() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return net::local_ip(fd());
}

void TcpStoreClient::set(const std::string& key, const std::string& value) {
  RF_CHECK(key.size() <= sp::kMaxKeyBytes && value.size() <= sp::kMaxValueBytes, kInvalidArgument)
      << "store key or value too large (" << key.size() << ", " << value.size() << " bytes)";
  locked_request([&] {
    Deadline deadline = Deadline::after_seconds(options_.request_timeout_s);
    sp::write_u8(fd(), static_cast<uint8_t>(sp::Command::kSet), deadline);
    sp::write_string(fd(), key, deadline);
    sp::write_string(fd(), value, deadline);
    RF_CHECK(sp::read_u8(fd(), deadline) == static_cast<uint8_t>(sp::Status::kOk), kPeerFailure)
        << "store refused set of '" << key << "'";
  });
}

int64_t TcpStoreClient::add(const std::string& key, int64_t delta) {
  return locked_request([&] {
    Deadline deadline = Deadline::after_seconds(options_.request_timeout_s);
    sp::write_u8(fd(), static_cast<uint8_t>(sp::Command::kAdd), deadline);
    sp::write_string(fd(), key, deadline);
    sp::write_i64(fd(), delta, deadline);
    RF_CHECK(sp::read_u8(fd(), deadline) == static_cast<uint8_t>(sp::Status::kOk), kPeerFailure)
        << "store refused add on '" << key << "'";
    return sp::read_i64(fd(), deadline);
  });
}

std::string TcpStoreClient::get(const std::string& key, const Deadline& deadline) {
  return locked_request([&] {
    std::string value;
    wait_locked(static_cast<uint8_t>(sp::Command::kGet), {key}, deadline, &value);
    return value;
  });
}

void TcpStoreClient::wait(const std::vector<std::string>& keys, const Deadline& deadline) {
  locked_request(
      [&] { wait_locked(static_cast<uint8_t>(sp::Command::kWait), keys, deadline, nullptr); });
}

void TcpStoreClient::wait_locked(uint8_t command, const std::vector<std::string>& keys,
                                 const Deadline& deadline, std::string* value) {
  // The server waits on our behalf and answers "timeout" with the missing keys at the deadline.
  uint32_t timeout_ms = static_cast<uint32_t>(deadline.remaining_ms(1 << 30));
  Deadline io_deadline = Deadline::after_seconds(options_.request_timeout_s);
  sp::write_u8(fd(), command, io_deadline);
  if (command == static_cast<uint8_t>(sp::Command::kWait)) {
    sp::write_u32(fd(), static_cast<uint32_t>(keys.size()), io_deadline);
  }
  for (const auto& key : keys) sp::write_string(fd(), key, io_deadline);
  sp::write_u32(fd(), timeout_ms, io_deadline);
  Deadline reply_deadline = Deadline::after_seconds(timeout_ms / 1000.0 + options_.reply_slack_s);
  auto status = static_cast<sp::Status>(sp::read_u8(fd(), reply_deadline));
  if (status == sp::Status::kTimeout) {
    uint32_t count = sp::read_u32(fd(), reply_deadline);
    RF_CHECK(count <= sp::kMaxKeysPerWait, kPeerFailure) << "malformed store reply";
    std::ostringstream missing;
    for (uint32_t i = 0; i < count; ++i) {
      missing << (i ? ", " : "") << "'" << sp::read_string(fd(), sp::kMaxKeyBytes, reply_deadline)
              << "'";
    }
    RF_THROW(kTimeout) << "rank " << options_.rank << ": timed out after " << timeout_ms / 1000.0
                       << " s waiting for store keys " << missing.str();
  }
  RF_CHECK(status == sp::Status::kOk, kPeerFailure) << "malformed store reply";
  if (value) *value = sp::read_string(fd(), sp::kMaxValueBytes, reply_deadline);
}

}  // namespace rf

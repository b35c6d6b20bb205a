#include "ringflow/store/tcp_store_server.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <system_error>
#include <vector>

#include "ringflow/common/check.h"
#include "ringflow/common/log.h"
#include "ringflow/net/handshake.h"
#include "ringflow/net/socket.h"
#include "ringflow/store/store_protocol.h"

namespace rf {

namespace sp = store_protocol;

namespace {
// A client that connects must finish its handshake within this; it bounds how long a silent
// or garbage connection holds one server thread.
constexpr double kHandshakeSeconds = 10.0;
// More clients than any job has ranks: beyond this, new connections are closed at once.
constexpr size_t kMaxConnections = 4096;
// Replies to an idle-but-alive client never block for long; requests may wait indefinitely.
constexpr double kReplySeconds = 30.0;
Deadline forever() { return Deadline::after_seconds(1e9); }
}  // namespace

TcpStoreServer::TcpStoreServer(StoreServerOptions options) : options_(std::move(options)) {
  listen_fd_ = net::listen_tcp(options_.host, options_.port, &port_);
  accept_thread_ = std::thread([this] { accept_loop(); });
}

TcpStoreServer::~TcpStoreServer() { close(); }

void TcpStoreServer::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    // Wake the accept poll and every client thread blocked in recv().
    ::shutdown(listen_fd_.get(), SHUT_RDWR);
    for (auto& connection : connections_) ::shutdown(connection.fd.get(), SHUT_RDWR);
  }
  changed_.notify_all();
  if (accept_thread_.joinable()) accept_thread_.join();
  // No new connections can appear now; join the client threads outside the lock.
  for (auto& connection : connections_) {
    if (connection.thread.joinable()) connection.thread.join();
  }
  connections_.clear();
  listen_fd_.reset();
}

void TcpStoreServer::accept_loop() {
  while (true) {
    pollfd entry{listen_fd_.get(), POLLIN, 0};
    int rc = ::poll(&entry, 1, -1);
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_) return;
    if (rc <= 0) continue;
    int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: the connection stays queued and poll() would return at once.
        // Back off (without the lock) instead of spinning.
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      continue;
    }
    UniqueFd accepted(fd);
    reap_finished();
    if (connections_.size() >= kMaxConnections) {
      RF_LOG(kWarning) << "store: refused a connection: " << kMaxConnections << " already open";
      continue;  // closes it
    }
    net::set_nodelay(fd);
    Connection* connection = &connections_.emplace_back();
    connection->fd = std::move(accepted);
    try {
      connection->thread = std::thread([this, connection] { serve(connection); });
    } catch (const std::system_error& error) {
      // No thread for it (resource limits): drop this client, keep serving the others.
      RF_LOG(kWarning) << "store: dropped a connection: " << error.what();
      connections_.pop_back();
    }
  }
}

void TcpStoreServer::reap_finished() {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if (!it->finished) {
      ++it;
      continue;
    }
    it->thread.join();
    it = connections_.erase(it);
  }
}

void TcpStoreServer::serve(Connection* connection) {
  int fd = connection->fd.get();
  try {
    net::Identity me{net::Role::kStoreServer, -1, 0, options_.job_id};
    me.generation = options_.generation < 0 ? 0 : static_cast<uint32_t>(options_.generation);
    auto check = [this](const net::Identity& peer, std::string* reason) {
      if (options_.generation >= 0 && peer.generation != options_.generation) {
        *reason = "client is at generation " + std::to_string(peer.generation) +
                  ", this store serves generation " + std::to_string(options_.generation);
        return net::Verdict::kRefused;
      }
      return net::Verdict::kAccepted;
    };
    auto result = net::handshake(fd, me, net::Role::kStoreClient, options_.secret, check,
                                 Deadline::after_seconds(kHandshakeSeconds));
    if (result.verdict != net::Verdict::kAccepted) {
      RF_LOG(kWarning) << "store: refused a connection: " << result.reason;
    } else {
      serve_requests(fd);
    }
  } catch (const Error& error) {
    // A client that disconnects, or sends garbage, only loses its own connection.
    RF_LOG(kInfo) << "store: closed a client connection: " << error.what();
  }
  ::shutdown(fd, SHUT_RDWR);
  connection->finished = true;
}

void TcpStoreServer::serve_requests(int fd) {
  while (true) {
    auto command = static_cast<sp::Command>(sp::read_u8(fd, forever()));
    Deadline reply_deadline = Deadline::after_seconds(kReplySeconds);
    switch (command) {
      case sp::Command::kSet: {
        std::string key = sp::read_string(fd, sp::kMaxKeyBytes, reply_deadline);
        std::string value = sp::read_string(fd, sp::kMaxValueBytes, reply_deadline);
        {
          std::lock_guard<std::mutex> lock(mutex_);
          data_[key] = std::move(value);
        }
        changed_.notify_all();
        sp::write_u8(fd, static_cast<uint8_t>(sp::Status::kOk), reply_deadline);
        break;
      }
      case sp::Command::kAdd: {
        std::string key = sp::read_string(fd, sp::kMaxKeyBytes, reply_deadline);
        int64_t delta = sp::read_i64(fd, reply_deadline);
        int64_t total = 0;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto found = data_.find(key);
          if (found != data_.end()) {
            const std::string& text = found->second;
            size_t used = 0;
            try {
              total = std::stoll(text, &used);
            } catch (const std::exception&) {
              used = 0;
            }
            RF_CHECK(used == text.size() && !text.empty(), kPeerFailure)
                << "add on key '" << key << "' that holds a non-integer";
          }
          RF_CHECK(!__builtin_add_overflow(total, delta, &total), kPeerFailure)
              << "add on key '" << key << "' overflows a 64-bit integer";
          data_[key] = std::to_string(total);
        }
        changed_.notify_all();
        sp::write_u8(fd, static_cast<uint8_t>(sp::Status::kOk), reply_deadline);
        sp::write_i64(fd, total, reply_deadline);
        break;
      }
      case sp::Command::kGet:
      case sp::Command::kWait: {
        uint32_t count = 1;
        if (command == sp::Command::kWait) {
          count = sp::read_u32(fd, reply_deadline);
          RF_CHECK(count <= sp::kMaxKeysPerWait, kPeerFailure) << "wait on " << count << " keys";
        }
        std::vector<std::string> keys;
        for (uint32_t i = 0; i < count; ++i) {
          keys.push_back(sp::read_string(fd, sp::kMaxKeyBytes, reply_deadline));
        }
        uint32_t timeout_ms = sp::read_u32(fd, reply_deadline);
        auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
        std::vector<std::string> missing;
        std::string value;
        {
          std::unique_lock<std::mutex> lock(mutex_);
          auto find_missing = [&] {
            missing.clear();
            for (const auto& key : keys) {
              if (!data_.count(key)) missing.push_back(key);
            }
            return missing.empty() || stopping_;
          };
          changed_.wait_until(lock, until, find_missing);
          if (stopping_) return;
          if (missing.empty() && command == sp::Command::kGet) value = data_[keys[0]];
        }
        Deadline write_deadline = Deadline::after_seconds(kReplySeconds);
        sp::write_u8(fd,
                     static_cast<uint8_t>(missing.empty() ? sp::Status::kOk : sp::Status::kTimeout),
                     write_deadline);
        if (!missing.empty()) {
          sp::write_u32(fd, static_cast<uint32_t>(missing.size()), write_deadline);
          for (const auto& key : missing) sp::write_string(fd, key, write_deadline);
        } else if (command == sp::Command::kGet) {
          sp::write_string(fd, value, write_deadline);
        }
        break;
      }
      default:
        RF_THROW(kPeerFailure) << "unknown store command " << int(command);
    }
  }
}

}  // namespace rf

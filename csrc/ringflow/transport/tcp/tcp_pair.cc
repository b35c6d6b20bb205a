#include "ringflow/transport/tcp/tcp_pair.h"

#include <algorithm>
#include <sstream>

#include "ringflow/common/check.h"
#include "ringflow/transport/frame.h"

namespace rf {

TcpPair::TcpPair(int peer_rank, std::vector<UniqueFd> streams) {
  RF_CHECK(!streams.empty(), kInternal) << "no connection to rank " << peer_rank;
  for (auto& fd : streams)
    streams_.push_back(std::make_unique<TcpStream>(peer_rank, std::move(fd)));
}

TcpPair::TcpPair(int peer_rank, UniqueFd fd)
    : TcpPair(peer_rank, [&] {
        std::vector<UniqueFd> one;
        one.push_back(std::move(fd));
        return one;
      }()) {}

std::vector<int> TcpPair::fds() const {
  std::vector<int> fds;
  for (const auto& s : streams_) fds.push_back(s->fd());
  return fds;
}

size_t TcpPair::parts(size_t len, uint64_t tag) const {
  if (streams_.size() == 1 || (tag & kPointToPointBit)) return 1;
  return std::clamp<size_t>(len / kMinPartBytes, 1, streams_.size());
}

template <typename Post>
TcpPair::Frame TcpPair::post(size_t len, uint64_t tag, Post post_part) {
  const size_t n = parts(len, tag);
  Frame frame{std::vector<uint64_t>(streams_.size(), kNone)};
  for (size_t i = 0; i < n; ++i) {
    const size_t begin = len * i / n;
    frame.tickets[i] = post_part(*streams_[i], begin, len * (i + 1) / n - begin);
  }
  return frame;
}

uint64_t TcpPair::post_send(const void* data, size_t len, uint64_t tag) {
  const char* bytes = static_cast<const char*>(data);
  sends_.push_back(post(len, tag, [&](TcpStream& s, size_t begin, size_t part) {
    return s.post_send(bytes + begin, part, tag);
  }));
  return sends_posted_++;
}

uint64_t TcpPair::post_recv(void* data, size_t len, uint64_t tag, size_t* actual_len) {
  char* bytes = static_cast<char*>(data);
  recvs_.push_back(post(len, tag, [&](TcpStream& s, size_t begin, size_t part) {
    // A striped frame is a collective's, of agreed length: each part is checked exactly.
    return s.post_recv(bytes ? bytes + begin : nullptr, part, tag,
                       begin == 0 ? actual_len : nullptr);
  }));
  return recvs_posted_++;
}

template <typename Done>
uint64_t TcpPair::retire(std::deque<Frame>& frames, Done done) {
  uint64_t count = 0;
  while (!frames.empty()) {
    const Frame& frame = frames.front();
    for (size_t i = 0; i < frame.tickets.size(); ++i) {
      if (frame.tickets[i] != kNone && done(i) <= frame.tickets[i]) return count;
    }
    frames.pop_front();
    ++count;
  }
  return count;
}

bool TcpPair::progress_sends() {
  bool idle = true;
  try {
    for (auto& s : streams_) idle = s->progress_sends() && idle;
  } catch (const Error&) {
    // What completed before the failure stays completed (the caller may report it).
    sends_done_ += retire(sends_, [this](size_t i) { return streams_[i]->sends_done(); });
    throw;
  }
  sends_done_ += retire(sends_, [this](size_t i) { return streams_[i]->sends_done(); });
  return idle;
}

bool TcpPair::progress_recvs() {
  bool idle = true;
  try {
    for (auto& s : streams_) idle = s->progress_recvs() && idle;
  } catch (const Error&) {
    recvs_done_ += retire(recvs_, [this](size_t i) { return streams_[i]->recvs_done(); });
    throw;
  }
  recvs_done_ += retire(recvs_, [this](size_t i) { return streams_[i]->recvs_done(); });
  return idle;
}

bool TcpPair::has_buffered_input() const {
  return std::any_of(streams_.begin(), streams_.end(),
                     [](const auto& s) { return s->has_buffered_input(); });
}

std::string TcpPair::pending_summary() const {
  std::ostringstream text;
  for (const auto& s : streams_) {
    std::string part = s->pending_summary();
    if (part.empty()) continue;
    if (text.tellp() > 0) text << ", ";
    text << part;
  }
  return text.str();
}

void TcpPair::abort(const std::string& reason) noexcept {
  for (auto& s : streams_) s->abort(reason);
  sends_.clear();
  recvs_.clear();
}

}  // namespace rf

// An owned, uninitialised byte buffer: scratch space that is always written before it is read,
// so it skips the zero-fill a std::vector<char> would pay on every large collective.
#pragma once

#include <cstddef>
#include <memory>

namespace rf {

class ScratchBuffer {
 public:
  explicit ScratchBuffer(size_t bytes) : data_(bytes ? new char[bytes] : nullptr), size_(bytes) {}
  char* data() { return data_.get(); }
  // Grows to at least `bytes` (contents are not kept); a reused buffer keeps its size.
  void reserve(size_t bytes) {
    if (bytes <= size_) return;
    data_.reset(new char[bytes]);
    size_ = bytes;
  }

 private:
  std::unique_ptr<char[]> data_;
  size_t size_;
};

}  // namespace rf

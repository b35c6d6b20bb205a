// An owned, uninitialised byte buffer: scratch space that is always written before it is read,
// so it skips the zero-fill a std::vector<char> would pay on every large collective.
#pragma once

#include <cstddef>
#include <memory>

namespace rf {

class ScratchBuffer {
 public:
  explicit ScratchBuffer(size_t bytes) : data_(bytes ? new char[bytes] : nullptr) {}
  char* data() { return data_.get(); }

 private:
  std::unique_ptr<char[]> data_;
};

}  // namespace rf

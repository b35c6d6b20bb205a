// Owns one shared mapping and unmaps it exactly once.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <utility>

namespace rf {

class Mapping {
 public:
  Mapping() = default;
  // Maps `bytes` of fd read-write and shared; invalid() when mmap fails (errno tells why).
  Mapping(int fd, size_t bytes) {
    void* address = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (address != MAP_FAILED) {
      address_ = static_cast<char*>(address);
      bytes_ = bytes;
    }
  }
  Mapping(Mapping&& other) noexcept
      : address_(std::exchange(other.address_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  Mapping& operator=(Mapping&& other) noexcept {
    if (this != &other) {
      reset();
      address_ = std::exchange(other.address_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { reset(); }

  bool valid() const { return address_ != nullptr; }
  char* data() const { return address_; }
  size_t size() const { return bytes_; }
  void reset() {
    if (address_) ::munmap(address_, bytes_);
    address_ = nullptr;
    bytes_ = 0;
  }

 private:
  char* address_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace rf

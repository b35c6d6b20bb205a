// device.h for a build without CUDA: queries answer "no GPU", everything else throws (callers
// only get here after asking available(), so a throw means a bug or a hand-made call).
#include "ringflow/common/check.h"
#include "ringflow/cuda/device.h"

namespace rf::cuda {

namespace {
[[noreturn]] void unavailable() { RF_THROW(kInvalidArgument) << "ringflow was built without CUDA"; }
}  // namespace

bool built() { return false; }
int device_count() { return 0; }
bool available() { return false; }
int device_of(const void*) { return -1; }
void set_device(int) { unavailable(); }
DeviceScope::DeviceScope(int) { unavailable(); }
DeviceScope::~DeviceScope() = default;

Stream::Stream(int) { unavailable(); }
Stream::~Stream() = default;
void Stream::synchronize() const { unavailable(); }

Event::Event(int) { unavailable(); }
Event::~Event() = default;
void Event::record(void*) { unavailable(); }
void Event::make_wait(void*) const { unavailable(); }
void Event::synchronize() const { unavailable(); }
void Event::wait(const Deadline&) const { unavailable(); }
bool Event::query() const { return true; }

PinnedBuffer::PinnedBuffer(size_t) { unavailable(); }
PinnedBuffer::~PinnedBuffer() = default;

DeviceBuffer::DeviceBuffer(int, size_t) { unavailable(); }
DeviceBuffer::~DeviceBuffer() = default;

void memcpy_async(void*, const void*, size_t, void*) { unavailable(); }
IpcHandle ipc_memory_handle(const DeviceBuffer&) { unavailable(); }

IpcMapping::IpcMapping(int, const IpcHandle&) { unavailable(); }
IpcMapping::~IpcMapping() = default;

}  // namespace rf::cuda

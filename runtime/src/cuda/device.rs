//! Device discovery, device selection (`--device cuda[:N]`, `QIE_DEVICE`) and the per-device
//! handle [`CudaDevice`] (context, stream, raw memory, copies, events, graphs).

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{result as drv, sys, CudaContext, CudaStream};

use super::libs::{self, Lib};
use super::{CudaError, CudaUnavailable, DevPtr, Result};

/// One CUDA device as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Bytes of device memory.
    pub total_memory: usize,
    /// (major, minor), e.g. (9, 0) for H100/H200.
    pub compute_capability: (u32, u32),
}

impl DeviceInfo {
    /// NVRTC architecture name of this device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cuda:{}  {}  {:.1} GiB  compute capability {}.{}",
            self.ordinal,
            self.name,
            self.total_memory as f64 / (1u64 << 30) as f64,
            self.compute_capability.0,
            self.compute_capability.1
        )
    }
}

fn unavailable(what: &str, e: drv::DriverError) -> CudaUnavailable {
    CudaUnavailable::new(format!("{what} failed: {}", super::driver_error_text(&e)))
}

/// Loads the driver library and initialises it. Every driver entry point goes through here first.
pub fn init_driver() -> std::result::Result<(), CudaUnavailable> {
    libs::require(Lib::Driver)?;
    drv::init().map_err(|e| match e.0 {
        sys::CUresult::CUDA_ERROR_NO_DEVICE => {
            CudaUnavailable::new("the NVIDIA driver is installed but reports no CUDA device")
        }
        _ => unavailable("cuInit (driver initialisation)", e),
    })
}

/// The driver's CUDA version as `1000 * major + 10 * minor` (13000 for CUDA 13.0).
pub fn driver_version() -> std::result::Result<i32, CudaUnavailable> {
    init_driver()?;
    let mut v = 0;
    // SAFETY: plain query into a local.
    unsafe { sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| unavailable("cuDriverGetVersion", e))?;
    Ok(v)
}

fn query_info(ordinal: usize) -> std::result::Result<DeviceInfo, CudaUnavailable> {
    let dev = drv::device::get(ordinal as i32).map_err(|e| unavailable("cuDeviceGet", e))?;
    let name = drv::device::get_name(dev).map_err(|e| unavailable("cuDeviceGetName", e))?;
    // SAFETY: `dev` came from cuDeviceGet.
    let total_memory =
        unsafe { drv::device::total_mem(dev) }.map_err(|e| unavailable("cuDeviceTotalMem", e))?;
    let attr = |a| unsafe { drv::device::get_attribute(dev, a) };
    let major = attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .map_err(|e| unavailable("cuDeviceGetAttribute", e))?;
    let minor = attr(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        .map_err(|e| unavailable("cuDeviceGetAttribute", e))?;
    Ok(DeviceInfo {
        ordinal,
        name,
        total_memory,
        compute_capability: (major as u32, minor as u32),
    })
}

/// Every CUDA device, or why there is none (no driver library, no device, driver too old...).
pub fn list_devices() -> std::result::Result<Vec<DeviceInfo>, CudaUnavailable> {
    init_driver()?;
    let n = drv::device::get_count().map_err(|e| unavailable("cuDeviceGetCount", e))?;
    if n <= 0 {
        return Err(CudaUnavailable::new(
            "the NVIDIA driver reports no CUDA device",
        ));
    }
    (0..n as usize).map(query_info).collect()
}

/// A device memory allocation (`cuMemAlloc`), freed on drop. Hands out raw [`DevPtr`]s: users
/// must keep the buffer alive while work that uses them is in flight.
pub struct DeviceBuffer {
    ptr: u64,
    bytes: usize,
    ctx: Arc<CudaContext>,
    counter: Arc<AllocCounter>,
}

/// Bytes this process holds through [`CudaDevice::alloc`] (now and at most), so that memory
/// reports can separate qie's own allocations from the CUDA context and libraries.
#[derive(Debug, Default)]
pub struct AllocCounter {
    current: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

impl AllocCounter {
    fn add(&self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.current.fetch_add(bytes, Relaxed) + bytes;
        self.peak.fetch_max(now, Relaxed);
    }
    fn sub(&self, bytes: usize) {
        self.current
            .fetch_sub(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn current(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl DeviceBuffer {
    pub fn ptr(&self) -> DevPtr {
        DevPtr(self.ptr)
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr != 0 && self.ctx.bind_to_thread().is_ok() {
            // Frees are synchronous with respect to the device: pending work finishes first.
            let _no_capture = capture_lock();
            // SAFETY: allocated by cuMemAlloc in this context and freed once.
            if unsafe { drv::free_sync(self.ptr) }.is_ok() {
                self.counter.sub(self.bytes.max(1));
            }
        }
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

/// One device: its primary context and the stream all work of this backend is queued on.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    driver_version: i32,
    sm_count: u32,
    max_shared_per_block_optin: u32,
    allocs: Arc<AllocCounter>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({})", self.info)
    }
}

impl CudaDevice {
    /// Opens device `ordinal` (its primary context) with a fresh non-blocking stream.
    pub fn new(ordinal: usize) -> Result<Arc<Self>> {
        init_driver()?;
        let count = drv::device::get_count().map_err(|e| unavailable("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaUnavailable::new(format!(
                "cuda:{ordinal} requested but the driver reports {count} device(s)"
            ))
            .into());
        }
        let info = query_info(ordinal)?;
        let ctx = CudaContext::new(ordinal)?;
        // This backend tracks its own dependencies (one stream, raw pointers).
        // SAFETY: no cudarc CudaSlice is shared between streams here.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream()?;
        let sm_count = ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let max_shared_per_block_optin =
            ctx.attribute(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        Ok(Arc::new(CudaDevice {
            ctx,
            stream,
            info,
            driver_version: driver_version()?,
            sm_count,
            max_shared_per_block_optin,
            allocs: Arc::new(AllocCounter::default()),
        }))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    /// NVRTC architecture, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        self.info.arch()
    }
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    pub fn max_shared_per_block_optin(&self) -> u32 {
        self.max_shared_per_block_optin
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Makes this device's context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread()?;
        Ok(())
    }

    /// This device's allocations made through [`CudaDevice::alloc`].
    pub fn allocations(&self) -> &AllocCounter {
        &self.allocs
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// A new uninitialised device allocation. Steady-state execution never calls this: plans
    /// run inside an [`super::Arena`].
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer> {
        self.bind()?;
        let _no_capture = capture_lock();
        // SAFETY: plain allocation; freed in DeviceBuffer::drop.
        let ptr = unsafe { drv::malloc_sync(bytes.max(1)) }.map_err(|e| {
            CudaError::Driver(format!(
                "cuMemAlloc({bytes} bytes): {}",
                super::driver_error_text(&e)
            ))
        })?;
        self.allocs.add(bytes.max(1));
        Ok(DeviceBuffer {
            ptr,
            bytes,
            ctx: self.ctx.clone(),
            counter: self.allocs.clone(),
        })
    }

    /// Copies `src` to device memory at `dst` (queued on the stream; `src` is read before return).
    pub fn htod<T: bytemuck::Pod>(&self, dst: DevPtr, src: &[T]) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` must address at least size_of_val(src) bytes; synchronous w.r.t. `src`.
        unsafe { drv::memcpy_htod_async(dst.0, src, self.cu_stream()) }?;
        self.synchronize()
    }

    /// Copies device memory at `src` into `dst`, waiting for the stream first.
    pub fn dtoh<T: bytemuck::Pod>(&self, dst: &mut [T], src: DevPtr) -> Result<()> {
        self.bind()?;
        // SAFETY: `src` must address at least size_of_val(dst) bytes.
        unsafe { drv::memcpy_dtoh_async(dst, src.0, self.cu_stream()) }?;
        self.synchronize()
    }

    /// Device-to-device copy of `bytes` bytes, queued on the stream.
    pub fn dtod(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both ranges must be valid device memory.
        unsafe { drv::memcpy_dtod_async(dst.0, src.0, bytes, self.cu_stream()) }?;
        Ok(())
    }

    /// Fills `bytes` bytes at `dst` with `value`, queued on the stream.
    pub fn memset(&self, dst: DevPtr, value: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the range must be valid device memory.
        unsafe { drv::memset_d8_async(dst.0, value, bytes, self.cu_stream()) }?;
        Ok(())
    }

    /// Waits for all queued work; reports asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// Records an event on the stream (for timing: [`Event::elapsed_ms`]).
    pub fn record_event(&self) -> Result<Event> {
        let ev = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?;
        ev.record(&self.stream)?;
        Ok(Event(ev))
    }

    /// Captures the work queued by `f` on this device's stream into a CUDA graph instead of
    /// running it; [`Graph::replay`] then runs it again with one launch. Pointers and scalar
    /// arguments are frozen at capture time (plans keep fixed arena offsets, so this holds).
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
        self.bind()?;
        let _no_alloc = capture_lock();
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let body = f();
        let graph = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        body?;
        let graph =
            graph?.ok_or_else(|| CudaError::Invalid("graph capture recorded nothing".into()))?;
        graph.upload()?;
        Ok(Graph(graph))
    }
}

/// Held while a stream captures, and around cuMemAlloc / cuMemFree: a free synchronises the
/// device, which invalidates a capture running in another thread of the process (seen as
/// CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED with tests running in parallel). Plans allocate nothing
/// while running, so the lock is uncontended in the steady state.
fn capture_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recorded CUDA event.
pub struct Event(cudarc::driver::CudaEvent);

impl Event {
    /// Milliseconds from `self` to `end` (waits for `end`).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        end.0.synchronize()?;
        Ok(self.0.elapsed_ms(&end.0)?)
    }
}

/// An instantiated CUDA graph on a device's stream.
pub struct Graph(cudarc::driver::CudaGraph);

impl Graph {
    /// Queues one replay of the captured work on the stream it was captured on.
    pub fn replay(&self) -> Result<()> {
        self.0.launch()?;
        Ok(())
    }
}

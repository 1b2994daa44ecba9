//! The bindings to Envoy's dynamic module C ABI, written by hand: the only
//! module with `unsafe`, each block with a `SAFETY` note.
//!
//! Targeted: Envoy **1.40.0**, whose ABI version string is `v0.2.0` (the
//! header `source/extensions/dynamic_modules/abi/abi.h`). Only what the
//! filter uses is bound:
//!
//! - the event hooks Envoy requires of an HTTP filter module, exported
//!   here under their ABI names (`envoy_dynamic_module_on_*`); those bbr
//!   has no use for (callouts, scheduling, watermarks, response events)
//!   answer at once;
//! - seventeen callbacks, looked up in the Envoy process with `dlsym` when
//!   the module is loaded rather than linked against: a callback missing
//!   from the Envoy it runs in refuses the module at load time, with the
//!   callback's name, instead of failing at its first call.
//!
//! The signatures are those of `abi.h` as of ABI `v0.1.0`, which the `v0.2`
//! ABI of Envoy 1.40 keeps (the ABI allows no breaking change to a released
//! function); every symbol bound here is exported by the Envoy 1.40.0
//! binary, and each is exercised by the end-to-end tests through it.
//!
//! The ABI version: [`envoy_dynamic_module_on_program_init`] returns
//! [`ABI_VERSION`]. Envoy compares it with its own and logs `Dynamic module
//! ABI version v0.2.0 matched.` (at info level), or a deprecation warning
//! when another Envoy's version differs; the ABI promises compatibility
//! with the next minor version (`v0.2.x` with `v0.3.y`).
//!
//! Every hook runs under `catch_unwind`: a panic never crosses into Envoy.
//! A panic in a request hook (a bug) is logged and the request goes on as
//! the filter last left it.

use std::{
    ffi::{CStr, c_char, c_void},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;

use crate::{
    config::{RulesWatch, Settings},
    filter::{BodyStatus, HeadersStatus, LocalReply, RequestFilter, Stream, Tally, TrailersStatus},
};

/// The ABI version this module is built against: Envoy 1.40's.
pub const ABI_VERSION: &CStr = c"v0.2.0";

// ----------------------------------------------------------------- types --

/// `envoy_dynamic_module_type_envoy_buffer`: bytes Envoy owns.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyBuffer {
    ptr: *const c_char,
    length: usize,
}

impl EnvoyBuffer {
    const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// The bytes, or `None` when the pointer is null with a length.
    ///
    /// # Safety
    /// A non-null `ptr` must point to `length` readable bytes for `'a`.
    unsafe fn as_slice<'a>(self) -> Option<&'a [u8]> {
        if self.ptr.is_null() {
            return (self.length == 0).then_some(&[]);
        }
        if self.length > isize::MAX as usize {
            return None;
        }
        // SAFETY: non-null, length checked against isize::MAX; the caller
        // vouches that Envoy keeps the bytes alive for 'a.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) })
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes the module owns.
#[repr(C)]
#[derive(Clone, Copy)]
struct ModuleBuffer {
    ptr: *const c_char,
    length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr().cast(),
            length: bytes.len(),
        }
    }

    /// A null buffer: `set_header` removes the header.
    const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
struct ModuleHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`.
#[repr(C)]
#[derive(Clone, Copy)]
struct EnvoyHttpHeader {
    key_ptr: *const c_char,
    key_length: usize,
    value_ptr: *const c_char,
    value_length: usize,
}

/// The C enums are `int`-sized.
type CEnum = i32;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADER: CEnum = 0;
/// `envoy_dynamic_module_type_http_body_type_ReceivedRequestBody`.
const RECEIVED_REQUEST_BODY: CEnum = 0;
/// `envoy_dynamic_module_type_http_body_type_BufferedRequestBody`.
const BUFFERED_REQUEST_BODY: CEnum = 1;
/// `envoy_dynamic_module_type_log_level_{Debug, Info, Error}`.
const LOG_DEBUG: CEnum = 1;
const LOG_INFO: CEnum = 2;
const LOG_ERROR: CEnum = 4;

/// The statuses hooks return (`…_status_Continue` is 0 in each enum).
const CONTINUE: CEnum = 0;
/// `…_request_headers_status_StopIteration`, `…_request_trailers_status_StopIteration`.
const STOP_ITERATION: CEnum = 1;
/// `…_request_body_status_StopIterationAndBuffer`.
const STOP_ITERATION_AND_BUFFER: CEnum = 1;
/// `…_request_body_status_StopIterationNoBuffer`.
const STOP_ITERATION_NO_BUFFER: CEnum = 3;

// ------------------------------------------------------------- callbacks --

static CALLBACKS: OnceLock<Callbacks> = OnceLock::new();

unsafe extern "C" {
    /// `dlsym(3)`; with a null handle (`RTLD_DEFAULT` on Linux) it searches
    /// the process's global symbols, where Envoy exports its callbacks.
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

/// The address of the Envoy callback `name`, or the name when Envoy has none.
fn lookup(name: &'static CStr) -> Result<*mut c_void, &'static CStr> {
    // SAFETY: `name` is NUL-terminated; a null handle is RTLD_DEFAULT.
    let address = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
    if address.is_null() {
        Err(name)
    } else {
        Ok(address)
    }
}

/// Declares [`Callbacks`], one field per Envoy callback with its C
/// signature, and `Callbacks::resolve`, which looks each up by name.
macro_rules! callbacks {
    ($($field:ident: $name:literal => $ty:ty,)*) => {
        /// The Envoy callbacks the filter uses, resolved once at load time.
        struct Callbacks {
            $($field: $ty,)*
        }

        impl Callbacks {
            fn resolve() -> Result<Callbacks, &'static CStr> {
                Ok(Callbacks {
                    $($field: {
                        let address = lookup($name)?;
                        // SAFETY: the symbol is Envoy's callback of that
                        // name, whose C signature (abi.h of Envoy 1.40) the
                        // field's type spells; a data pointer and a function
                        // pointer have the same size where Envoy runs.
                        unsafe { std::mem::transmute::<*mut c_void, $ty>(address) }
                    },)*
                })
            }
        }
    };
}

callbacks! {
    log: c"envoy_dynamic_module_callback_log"
        => unsafe extern "C" fn(CEnum, ModuleBuffer),
    log_enabled: c"envoy_dynamic_module_callback_log_enabled"
        => unsafe extern "C" fn(CEnum) -> bool,
    get_headers_size: c"envoy_dynamic_module_callback_http_get_headers_size"
        => unsafe extern "C" fn(*mut c_void, CEnum) -> usize,
    get_headers: c"envoy_dynamic_module_callback_http_get_headers"
        => unsafe extern "C" fn(*mut c_void, CEnum, *mut EnvoyHttpHeader) -> bool,
    set_header: c"envoy_dynamic_module_callback_http_set_header"
        => unsafe extern "C" fn(*mut c_void, CEnum, ModuleBuffer, ModuleBuffer) -> bool,
    get_body_chunks_size: c"envoy_dynamic_module_callback_http_get_body_chunks_size"
        => unsafe extern "C" fn(*mut c_void, CEnum) -> usize,
    get_body_chunks: c"envoy_dynamic_module_callback_http_get_body_chunks"
        => unsafe extern "C" fn(*mut c_void, CEnum, *mut EnvoyBuffer) -> bool,
    drain_body: c"envoy_dynamic_module_callback_http_drain_body"
        => unsafe extern "C" fn(*mut c_void, CEnum, usize) -> bool,
    append_body: c"envoy_dynamic_module_callback_http_append_body"
        => unsafe extern "C" fn(*mut c_void, CEnum, ModuleBuffer) -> bool,
    clear_route_cache: c"envoy_dynamic_module_callback_http_clear_route_cache"
        => unsafe extern "C" fn(*mut c_void),
    send_response: c"envoy_dynamic_module_callback_http_send_response"
        => unsafe extern "C" fn(
            *mut c_void, u32, *mut ModuleHttpHeader, usize, ModuleBuffer, ModuleBuffer,
        ),
    get_buffer_limit: c"envoy_dynamic_module_callback_http_get_buffer_limit"
        => unsafe extern "C" fn(*mut c_void) -> u64,
    set_buffer_limit: c"envoy_dynamic_module_callback_http_set_buffer_limit"
        => unsafe extern "C" fn(*mut c_void, u64),
    define_counter: c"envoy_dynamic_module_callback_http_filter_config_define_counter"
        => DefineMetric,
    increment_counter: c"envoy_dynamic_module_callback_http_filter_increment_counter"
        => RecordMetric,
    define_histogram: c"envoy_dynamic_module_callback_http_filter_config_define_histogram"
        => DefineMetric,
    record_histogram: c"envoy_dynamic_module_callback_http_filter_record_histogram_value"
        => RecordMetric,
}

/// `…_config_define_{counter,histogram}`: the configuration, the name, the
/// label names and their count, where the id goes; a metrics result.
type DefineMetric =
    unsafe extern "C" fn(*mut c_void, ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> CEnum;
/// `…_increment_counter`, `…_record_histogram_value`: the stream, the id,
/// the label values and their count, the value; a metrics result.
type RecordMetric =
    unsafe extern "C" fn(*mut c_void, usize, *mut ModuleBuffer, usize, u64) -> CEnum;

/// Logs through Envoy (the `dynamic_modules` logger), once it is bound.
fn log(level: CEnum, message: &str) {
    if let Some(cb) = CALLBACKS.get() {
        // SAFETY: the message outlives the call; Envoy copies it.
        unsafe { (cb.log)(level, ModuleBuffer::of(message.as_bytes())) }
    }
}

/// Logs the message `make` makes through Envoy, only when Envoy's
/// `dynamic_modules` logger is at `level` or below (so a debug line costs
/// a request nothing when debug logs are off).
fn log_lazily(level: CEnum, make: impl FnOnce() -> String) {
    let Some(cb) = CALLBACKS.get() else {
        return;
    };
    // SAFETY: a plain query of Envoy's logger.
    if unsafe { (cb.log_enabled)(level) } {
        log(level, &make());
    }
}

// ----------------------------------------------------- program and config --

/// Called once when Envoy loads the module: binds the callbacks and returns
/// [`ABI_VERSION`], or null (Envoy then refuses the module) when a callback
/// is missing from this Envoy.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    let bound = catch_unwind(|| match Callbacks::resolve() {
        Ok(cb) => {
            let _ = CALLBACKS.set(cb);
            true
        }
        Err(missing) => {
            // Envoy's logger is what is missing: stderr is all there is.
            eprintln!(
                "bbr-envoy: this Envoy lacks the callback {} (built for Envoy 1.40, ABI {})",
                missing.to_string_lossy(),
                ABI_VERSION.to_string_lossy()
            );
            false
        }
    });
    match bound {
        Ok(true) => ABI_VERSION.as_ptr(),
        _ => std::ptr::null(),
    }
}

/// The in-module filter configuration.
struct FilterConfig {
    settings: Arc<Settings>,
    stats: Option<Stats>,
    _watch: Option<RulesWatch>,
}

/// The ids of the counters and histograms defined in Envoy's stats for a
/// configuration: the ext_proc server's metric names, under the module's
/// `metrics_namespace`.
#[derive(Clone, Copy, Debug)]
struct Stats {
    success: usize,
    routed: usize,
    model_not_in_body: usize,
    model_not_parsed: usize,
    rejected: usize,
    fail_open: usize,
    route_matches: usize,
    decision_microseconds: usize,
    bytes_before_decision: usize,
}

/// The decision-latency histogram: the ext_proc server's
/// `bbr_decision_duration_seconds` in microseconds, as Envoy's histograms
/// take whole numbers.
const DECISION_MICROSECONDS: &str = "bbr_decision_duration_microseconds";

/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: CEnum = 0;

impl Stats {
    /// Defines the stats on the Envoy configuration `envoy`; `None` (and
    /// no counting) when Envoy refuses one.
    fn define(cb: &Callbacks, envoy: *mut c_void) -> Option<Stats> {
        let counter =
            |name: &str, labels: &[&str]| Self::define_one(cb.define_counter, envoy, name, labels);
        let histogram = |name: &str| Self::define_one(cb.define_histogram, envoy, name, &[]);
        Some(Stats {
            success: counter("bbr_success_total", &[])?,
            routed: counter("bbr_routed_total", &[])?,
            model_not_in_body: counter("bbr_model_not_in_body_total", &[])?,
            model_not_parsed: counter("bbr_model_not_parsed_total", &[])?,
            rejected: counter("bbr_rejected_total", &["reason"])?,
            fail_open: counter("bbr_fail_open_total", &["reason"])?,
            route_matches: counter("bbr_route_matches_total", &["rule", "pool"])?,
            decision_microseconds: histogram(DECISION_MICROSECONDS)?,
            bytes_before_decision: histogram("bbr_bytes_before_decision")?,
        })
    }

    /// Defines one counter or histogram (`define`, Envoy's callback for
    /// it) with `labels`; its id, or `None` when Envoy refuses it.
    fn define_one(
        define: DefineMetric,
        envoy: *mut c_void,
        name: &str,
        labels: &[&str],
    ) -> Option<usize> {
        let mut labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        let mut id = 0usize;
        // SAFETY: `envoy` is the configuration of this config_new call;
        // the name and labels outlive the call (Envoy copies them) and
        // `id` is a valid place for the result.
        let result = unsafe {
            define(
                envoy,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_mut_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

/// The in-module filter of one HTTP stream.
struct ModuleFilter {
    filter: RequestFilter,
    stats: Option<Stats>,
}

/// A new filter configuration from `config` (JSON); null refuses it, with
/// the reason in Envoy's log.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    filter_config_envoy_ptr: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let made = catch_unwind(|| {
        // SAFETY: Envoy keeps the name alive for this call.
        let name = unsafe { name.as_slice() };
        // SAFETY: and the configuration.
        let text = unsafe { config.as_slice() };
        let (Some(name), Some(text)) = (name, text) else {
            return Err("bad configuration buffers".to_owned());
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let (settings, watch) =
            Settings::from_text(text).map_err(|e| format!("filter {name:?}: {e}"))?;
        let settings = Arc::new(settings);
        let watch = match watch {
            Some((path, poll)) => {
                let shown = path.display().to_string();
                let report = move |result: Result<(), String>| match result {
                    Ok(()) => log(LOG_INFO, &format!("bbr: rules reloaded from {shown}")),
                    Err(e) => log(
                        LOG_ERROR,
                        &format!("bbr: rules file refused, the table in force stays: {e}"),
                    ),
                };
                Some(
                    RulesWatch::start(path, poll, settings.rules.clone(), report)
                        .map_err(|e| format!("filter {name:?}: cannot watch the rules: {e}"))?,
                )
            }
            None => None,
        };
        let stats = match (CALLBACKS.get(), filter_config_envoy_ptr.is_null()) {
            (Some(cb), false) => Stats::define(cb, filter_config_envoy_ptr),
            _ => None,
        };
        if stats.is_none() && CALLBACKS.get().is_some() {
            log(LOG_ERROR, "bbr: Envoy refused the metrics; none are kept");
        }
        Ok(Box::new(FilterConfig {
            settings,
            stats,
            _watch: watch,
        }))
    });
    match made {
        Ok(Ok(config)) => Box::into_raw(config).cast_const().cast(),
        Ok(Err(reason)) => {
            log(LOG_ERROR, &format!("bbr: configuration refused: {reason}"));
            std::ptr::null()
        }
        Err(_) => std::ptr::null(),
    }
}

/// Envoy drops a filter configuration (its filters are all gone).
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if config.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: `config` came from Box::into_raw in config_new, and Envoy
        // destroys it once.
        drop(unsafe { Box::from_raw(config.cast_mut().cast::<FilterConfig>()) });
    });
}

// ----------------------------------------------------------------- filter --

/// A new filter for one HTTP stream.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    if config.is_null() {
        return std::ptr::null();
    }
    catch_unwind(|| {
        // SAFETY: `config` is a live FilterConfig: Envoy destroys a
        // configuration only after its filters.
        let config = unsafe { &*config.cast::<FilterConfig>() };
        let filter = Box::new(ModuleFilter {
            filter: RequestFilter::new(Arc::clone(&config.settings)),
            stats: config.stats,
        });
        Box::into_raw(filter).cast_const().cast::<c_void>()
    })
    .unwrap_or(std::ptr::null())
}

/// Envoy drops the filter of a finished stream.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    if filter.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: `filter` came from Box::into_raw in filter_new, and Envoy
        // destroys it once.
        drop(unsafe { Box::from_raw(filter.cast_mut().cast::<ModuleFilter>()) });
    });
}

/// Runs `hook` on the filter behind `filter` with the stream behind
/// `envoy`; `fallback` when either is null, the callbacks are not bound,
/// or the hook panics.
fn with_filter<R>(
    envoy: *mut c_void,
    filter: *const c_void,
    fallback: R,
    hook: impl FnOnce(&mut RequestFilter, &mut EnvoyStream) -> R,
) -> R {
    let Some(cb) = CALLBACKS.get() else {
        return fallback;
    };
    if envoy.is_null() || filter.is_null() {
        return fallback;
    }
    // SAFETY: `filter` is the live ModuleFilter Envoy got from filter_new;
    // Envoy calls one hook of a stream at a time, on its worker thread, so
    // this is the only reference.
    let filter = unsafe { &mut *filter.cast_mut().cast::<ModuleFilter>() };
    let mut stream = EnvoyStream {
        envoy,
        cb,
        stats: filter.stats,
    };
    let filter = &mut filter.filter;
    match catch_unwind(AssertUnwindSafe(|| hook(filter, &mut stream))) {
        Ok(r) => r,
        Err(_) => {
            log(LOG_ERROR, "bbr: the filter panicked; the request goes on");
            fallback
        }
    }
}

/// The request headers arrived.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> CEnum {
    with_filter(envoy, filter, CONTINUE, |f, s| {
        match f.on_request_headers(s, end_of_stream) {
            HeadersStatus::Continue => CONTINUE,
            HeadersStatus::Stop => STOP_ITERATION,
        }
    })
}

/// A request body chunk arrived (the "received" body of this call).
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: *mut c_void,
    filter: *const c_void,
    end_of_stream: bool,
) -> CEnum {
    with_filter(envoy, filter, CONTINUE, |f, s| {
        match f.on_request_body(s, end_of_stream) {
            BodyStatus::Continue => CONTINUE,
            BodyStatus::Buffer => STOP_ITERATION_AND_BUFFER,
            BodyStatus::Drop => STOP_ITERATION_NO_BUFFER,
        }
    })
}

/// The request trailers arrived.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: *mut c_void,
    filter: *const c_void,
) -> CEnum {
    with_filter(envoy, filter, CONTINUE, |f, s| {
        match f.on_request_trailers(s) {
            TrailersStatus::Continue => CONTINUE,
            TrailersStatus::Stop => STOP_ITERATION,
        }
    })
}

/// Response headers: passed at once.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> CEnum {
    CONTINUE
}

/// Response body: never held (token streams keep flowing).
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _end_of_stream: bool,
) -> CEnum {
    CONTINUE
}

/// Response trailers: passed at once.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: *mut c_void,
    _filter: *const c_void,
) -> CEnum {
    CONTINUE
}

/// The stream is complete; the filter is destroyed next.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

/// An HTTP callout finished: bbr makes none.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _callout_id: u64,
    _result: CEnum,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *mut EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

/// Streamed callout headers: bbr starts no callout stream.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _headers: *mut EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

/// Streamed callout data: bbr starts no callout stream.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

/// Streamed callout trailers: bbr starts no callout stream.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _trailers: *mut EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

/// A callout stream completed: bbr starts none.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
) {
}

/// A callout stream was reset: bbr starts none.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _stream_id: u64,
    _reason: CEnum,
) {
}

/// A scheduled event: bbr schedules none.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: *mut c_void,
    _filter: *const c_void,
    _event_id: u64,
) {
}

/// Downstream write buffer over its high watermark: only terminal filters
/// care.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

/// Downstream write buffer under its low watermark: only terminal filters
/// care.
#[unsafe(no_mangle)]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: *mut c_void,
    _filter: *const c_void,
) {
}

// ------------------------------------------------------------ the stream --

/// One Envoy HTTP stream, for the length of one hook.
struct EnvoyStream {
    envoy: *mut c_void,
    cb: &'static Callbacks,
    stats: Option<Stats>,
}

/// How many body slices are looked up without a heap allocation: Envoy
/// hands a body event's chunk in one slice or a few.
const INLINE_SLICES: usize = 8;
/// How many request headers are looked up without a heap allocation.
const INLINE_HEADERS: usize = 32;

impl EnvoyStream {
    /// Calls `f` with the slices of the request body of `kind` (received
    /// or buffered) where Envoy holds them, in order; none when Envoy has
    /// no such body. They are valid while `f` runs: nothing changes the
    /// body in between, and `f` cannot reach the stream.
    fn with_body<R>(&mut self, kind: CEnum, f: impl FnOnce(&[&[u8]]) -> R) -> R {
        // SAFETY: `envoy` is the live stream of the current hook.
        let n = unsafe { (self.cb.get_body_chunks_size)(self.envoy, kind) };
        if n == 0 {
            return f(&[]);
        }
        let mut inline = [EnvoyBuffer::EMPTY; INLINE_SLICES];
        let mut heap = Vec::new();
        let buffers: &mut [EnvoyBuffer] = match n <= INLINE_SLICES {
            true => &mut inline[..n],
            false => {
                heap.resize(n, EnvoyBuffer::EMPTY);
                &mut heap
            }
        };
        // SAFETY: `buffers` has room for the `n` buffers Envoy reported for
        // this body, in this hook, with no body change in between.
        let ok = unsafe { (self.cb.get_body_chunks)(self.envoy, kind, buffers.as_mut_ptr()) };
        if !ok {
            return f(&[]);
        }
        let mut inline_parts: [&[u8]; INLINE_SLICES] = [&[]; INLINE_SLICES];
        let mut heap_parts = Vec::new();
        let parts: &mut [&[u8]] = match n <= INLINE_SLICES {
            true => &mut inline_parts[..n],
            false => {
                heap_parts.resize(n, &[][..]);
                &mut heap_parts
            }
        };
        for (part, buffer) in parts.iter_mut().zip(buffers.iter()) {
            // SAFETY: Envoy's body slices stay valid until the hook returns
            // or the body changes; `parts` does not outlive this call, in
            // which nothing changes the body.
            *part = unsafe { buffer.as_slice() }.unwrap_or_default();
        }
        f(parts)
    }

    /// The request body of `kind` (received or buffered), copied: what a
    /// rewrite splices, before the body is replaced.
    fn copied_body(&mut self, kind: CEnum) -> Bytes {
        self.with_body(kind, |parts| match parts {
            [] => Bytes::new(),
            [one] => Bytes::copy_from_slice(one),
            parts => Bytes::from(parts.concat()),
        })
    }
}

impl Stream for EnvoyStream {
    fn for_each_request_header(&mut self, f: &mut dyn FnMut(&[u8], &[u8])) {
        // SAFETY: `envoy` is the live stream of the current hook.
        let n = unsafe { (self.cb.get_headers_size)(self.envoy, REQUEST_HEADER) };
        if n == 0 {
            return;
        }
        let empty = EnvoyHttpHeader {
            key_ptr: std::ptr::null(),
            key_length: 0,
            value_ptr: std::ptr::null(),
            value_length: 0,
        };
        let mut inline = [empty; INLINE_HEADERS];
        let mut heap = Vec::new();
        let headers: &mut [EnvoyHttpHeader] = match n <= INLINE_HEADERS {
            true => &mut inline[..n],
            false => {
                heap.resize(n, empty);
                &mut heap
            }
        };
        // SAFETY: `headers` has room for the `n` headers Envoy reported, in
        // this hook, with no header change in between.
        let ok = unsafe { (self.cb.get_headers)(self.envoy, REQUEST_HEADER, headers.as_mut_ptr()) };
        if !ok {
            return;
        }
        for h in headers.iter() {
            let key = EnvoyBuffer {
                ptr: h.key_ptr,
                length: h.key_length,
            };
            let value = EnvoyBuffer {
                ptr: h.value_ptr,
                length: h.value_length,
            };
            // SAFETY: the header map is not changed while `f` runs (it only
            // reads), so Envoy's header bytes stay valid.
            let key = unsafe { key.as_slice() };
            // SAFETY: as for the key.
            let value = unsafe { value.as_slice() };
            if let (Some(key), Some(value)) = (key, value) {
                f(key, value);
            }
        }
    }

    fn set_request_header(&mut self, name: &str, value: &[u8]) {
        // SAFETY: both buffers outlive the call; Envoy copies them.
        unsafe {
            (self.cb.set_header)(
                self.envoy,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        // SAFETY: the name outlives the call; a null value removes.
        unsafe {
            (self.cb.set_header)(
                self.envoy,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NULL,
            );
        }
    }

    fn clear_route_cache(&mut self) {
        // SAFETY: `envoy` is the live stream of the current hook.
        unsafe { (self.cb.clear_route_cache)(self.envoy) }
    }

    fn reserve_request_buffer(&mut self, bytes: u64) {
        // SAFETY: `envoy` is the live stream of the current hook.
        let limit = unsafe { (self.cb.get_buffer_limit)(self.envoy) };
        if limit != 0 && limit < bytes {
            // SAFETY: as above.
            unsafe { (self.cb.set_buffer_limit)(self.envoy, bytes) }
            log_lazily(LOG_DEBUG, || {
                format!("bbr: request buffer limit raised from {limit} to {bytes}")
            });
        }
    }

    fn read_received_body(&mut self, f: &mut dyn FnMut(&[&[u8]])) {
        self.with_body(RECEIVED_REQUEST_BODY, f);
    }

    fn held_request_body(&mut self, with_received: bool) -> Vec<Bytes> {
        let mut held = vec![self.copied_body(BUFFERED_REQUEST_BODY)];
        if with_received {
            held.push(self.copied_body(RECEIVED_REQUEST_BODY));
        }
        held
    }

    fn replace_held_request_body(&mut self, body: &[Bytes], with_received: bool) -> bool {
        let kinds: &[CEnum] = match with_received {
            true => &[BUFFERED_REQUEST_BODY, RECEIVED_REQUEST_BODY],
            false => &[BUFFERED_REQUEST_BODY],
        };
        for &kind in kinds {
            // SAFETY: `envoy` is the live stream of the current hook; no
            // slice of the body is held across this call (ours are copies).
            // Draining more than there is drains all; an absent buffer
            // (nothing buffered yet) reports false and is empty anyway.
            unsafe { (self.cb.drain_body)(self.envoy, kind, usize::MAX) };
        }
        let into = match with_received {
            true => RECEIVED_REQUEST_BODY,
            false => BUFFERED_REQUEST_BODY,
        };
        body.iter().all(|chunk| {
            // SAFETY: the chunk outlives the call; Envoy copies it.
            unsafe { (self.cb.append_body)(self.envoy, into, ModuleBuffer::of(chunk)) }
        })
    }

    fn count(&mut self, tally: Tally<'_>) {
        let Some(c) = self.stats else {
            return;
        };
        let (id, labels): (usize, &[&str]) = match tally {
            Tally::Success => (c.success, &[]),
            Tally::Routed => (c.routed, &[]),
            Tally::ModelNotInBody => (c.model_not_in_body, &[]),
            Tally::ModelNotParsed => (c.model_not_parsed, &[]),
            Tally::Rejected(kind) => (c.rejected, &[kind.as_str()]),
            Tally::FailOpen(kind) => (c.fail_open, &[kind.as_str()]),
            Tally::RouteMatch { rule, pool } => (c.route_matches, &[rule, pool]),
            // The module defines no body-field stats.
            _ => return,
        };
        // Two labels at most: no allocation.
        let mut buffers = [ModuleBuffer::NULL; 2];
        for (buffer, label) in buffers.iter_mut().zip(labels) {
            *buffer = ModuleBuffer::of(label.as_bytes());
        }
        // SAFETY: `envoy` is the live stream of the current hook, `id` a
        // counter of its configuration with as many labels as given; the
        // label values outlive the call.
        unsafe {
            (self.cb.increment_counter)(self.envoy, id, buffers.as_mut_ptr(), labels.len(), 1)
        };
    }

    fn decided(&mut self, elapsed: Duration, bytes: u64) {
        let Some(stats) = self.stats else {
            return;
        };
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        for (id, value) in [
            (stats.decision_microseconds, micros),
            (stats.bytes_before_decision, bytes),
        ] {
            // SAFETY: `envoy` is the live stream of the current hook, `id`
            // a histogram of its configuration, without labels.
            unsafe { (self.cb.record_histogram)(self.envoy, id, std::ptr::null_mut(), 0, value) };
        }
    }

    fn send_local_reply(&mut self, reply: &LocalReply) {
        let mut headers: Vec<ModuleHttpHeader> = reply
            .headers
            .iter()
            .map(|(name, value)| ModuleHttpHeader {
                key_ptr: name.as_ptr().cast(),
                key_length: name.len(),
                value_ptr: value.as_ptr().cast(),
                value_length: value.len(),
            })
            .collect();
        // SAFETY: the headers, body and details outlive the call; Envoy
        // copies them into its reply.
        unsafe {
            (self.cb.send_response)(
                self.envoy,
                u32::from(reply.status),
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::of(reply.body.as_bytes()),
                ModuleBuffer::of(reply.details.as_bytes()),
            );
        }
    }
}

/// The bytes the unit tests allocate, thread by thread: how a test shows
/// what the filter copies of a request (a copy of body bytes needs room
/// to go to).
#[cfg(test)]
pub(crate) mod allocations {
    use std::{
        alloc::{GlobalAlloc, Layout, System},
        cell::Cell,
    };

    thread_local! {
        static ALLOCATED: Cell<u64> = const { Cell::new(0) };
    }

    fn add(bytes: usize) {
        // A constant thread-local without a destructor: no allocation, and
        // none after the thread's end (`try_with`).
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + bytes as u64));
    }

    /// The system allocator, counting the room it hands out.
    struct Counting;

    // SAFETY: every call is passed to the system allocator with the
    // caller's arguments; counting touches no allocated memory.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            // SAFETY: the caller keeps `GlobalAlloc::alloc`'s contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            add(layout.size());
            // SAFETY: as for `alloc`.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size.saturating_sub(layout.size()));
            // SAFETY: the caller keeps `GlobalAlloc::realloc`'s contract.
            unsafe { System.realloc(ptr, layout, new_size) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller keeps `GlobalAlloc::dealloc`'s contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Runs `f`; returns what it returned and the bytes it allocated on
    /// this thread.
    pub(crate) fn during<R>(f: impl FnOnce() -> R) -> (R, u64) {
        let before = ALLOCATED.with(Cell::get);
        let r = f();
        (r, ALLOCATED.with(Cell::get) - before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_without_envoy_callbacks_refuses_the_module() {
        // The test binary exports none of Envoy's callbacks.
        assert!(envoy_dynamic_module_on_program_init().is_null());
        assert!(CALLBACKS.get().is_none());
        // Hooks then let requests go on, touching nothing.
        let config = envoy_dynamic_module_on_http_filter_config_new(
            std::ptr::null_mut(),
            EnvoyBuffer::EMPTY,
            EnvoyBuffer::EMPTY,
        );
        assert!(!config.is_null(), "an empty configuration is every default");
        let filter = envoy_dynamic_module_on_http_filter_new(config, std::ptr::null_mut());
        assert!(!filter.is_null());
        let envoy = std::ptr::NonNull::<u8>::dangling()
            .as_ptr()
            .cast::<c_void>();
        assert_eq!(
            envoy_dynamic_module_on_http_filter_request_headers(envoy, filter, false),
            CONTINUE
        );
        envoy_dynamic_module_on_http_filter_destroy(filter);
        envoy_dynamic_module_on_http_filter_config_destroy(config);
    }

    #[test]
    fn envoy_buffers_are_checked_before_they_are_read() {
        // SAFETY: null pointers are never read.
        let empty = unsafe { EnvoyBuffer::EMPTY.as_slice() };
        assert_eq!(empty, Some(&[][..]));
        let dangling = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 3,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { dangling.as_slice() }, None);
        let text = b"model";
        let buffer = EnvoyBuffer {
            ptr: text.as_ptr().cast(),
            length: text.len(),
        };
        // SAFETY: `text` is alive and `length` long.
        assert_eq!(unsafe { buffer.as_slice() }, Some(&text[..]));
    }

    #[test]
    fn a_bad_configuration_is_refused_with_a_null_pointer() {
        let text = br#"{"policy":"lax"}"#;
        let config = EnvoyBuffer {
            ptr: text.as_ptr().cast(),
            length: text.len(),
        };
        let made = envoy_dynamic_module_on_http_filter_config_new(
            std::ptr::null_mut(),
            EnvoyBuffer::EMPTY,
            config,
        );
        assert!(made.is_null());
    }
}

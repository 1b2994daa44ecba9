//! The gateway's log lines: [`LineFormat`], a [`tracing_subscriber`] event
//! formatter that writes what the default `fmt` format writes, in the same
//! order, without going through `core::fmt` for each part; and
//! [`BatchWriter`], which writes the lines in batches from a thread of its
//! own.
//!
//! A line is `TIMESTAMP LEVEL TARGET: MESSAGE key=value...`:
//!
//! ```text
//! 2026-12-02T15:07:03.814391Z  INFO gateway::access: request method=POST path=/v1/chat/completions status=200
//! ```
//!
//! The gateway writes one line per request, and with the default format
//! (timestamps and fields formatted through `core::fmt`, each field name
//! through an ANSI painter even with colours off) that line cost more than
//! the routing decision itself. Here the date and time of the current second
//! are formatted once per second and thread, numbers go through `itoa` and
//! `ryu`, and strings are copied as they are.
//!
//! A string value with a space, a quote, a backslash, `=` or a control
//! character is written quoted and escaped (as `{:?}` writes it), so that a
//! model name from a client's body cannot forge a field or a line.
//!
//! One `write` per line, or one wake-up of a writing thread per line, costs
//! more than the line's formatting: [`BatchWriter`] appends lines to a shared
//! buffer that its thread writes out every 100 ms or 64 KiB.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The gateway's event format (see the [module](self) docs): colours only
/// when the subscriber's writer says it takes ANSI escapes.
///
/// ```
/// use bbr_gateway::log::LineFormat;
///
/// let subscriber = tracing_subscriber::fmt()
///     .event_format(LineFormat::default())
///     .with_writer(std::io::sink)
///     .finish();
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!(target: "gateway::access", status = 200u16, model = "chatbot", "request");
/// });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct LineFormat;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        timestamp(&mut writer, SystemTime::now())?;
        let metadata = event.metadata();
        let (level, colour) = match *metadata.level() {
            Level::ERROR => (" ERROR ", "\x1b[31m"),
            Level::WARN => ("  WARN ", "\x1b[33m"),
            Level::INFO => ("  INFO ", "\x1b[32m"),
            Level::DEBUG => (" DEBUG ", "\x1b[34m"),
            Level::TRACE => (" TRACE ", "\x1b[35m"),
        };
        if ansi {
            writer.write_str(colour)?;
            writer.write_str(level)?;
            writer.write_str("\x1b[0m")?;
        } else {
            writer.write_str(level)?;
        }
        // The spans the event is in, outermost first, as `name:`.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                writer.write_str(span.name())?;
                writer.write_str(":")?;
            }
            writer.write_str(" ")?;
        }
        writer.write_str(metadata.target())?;
        writer.write_str(":")?;
        let mut fields = Fields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("\n")
    }
}

/// Writes `2026-12-02T15:07:03.814391Z` for `now`.
fn timestamp(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    thread_local! {
        /// The second last formatted on this thread, and its text.
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != seconds {
            *cell = (seconds, date_time(seconds));
        }
        // ASCII digits and separators only.
        writer.write_str(std::str::from_utf8(&cell.1).unwrap_or("????-??-??T??:??:??"))
    })?;
    let mut micros = *b".000000Z";
    let mut n = since.subsec_micros();
    for digit in micros[1..7].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    writer.write_str(std::str::from_utf8(&micros).unwrap_or(".??????Z"))
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of `seconds` since the Unix epoch.
fn date_time(seconds: u64) -> [u8; 19] {
    let at = i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, mut value: u32| {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, u32::try_from(at.year()).unwrap_or(0));
    put(5, 2, u32::from(u8::from(at.month())));
    put(8, 2, u32::from(at.day()));
    put(11, 2, u32::from(at.hour()));
    put(14, 2, u32::from(at.minute()));
    put(17, 2, u32::from(at.second()));
    text
}

/// Writes an event's fields: the message as it is, then ` name=value`.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn name(&mut self, field: &Field) {
        if self.result.is_ok() {
            self.result = self
                .writer
                .write_str(" ")
                .and_then(|()| self.writer.write_str(field.name()))
                .and_then(|()| self.writer.write_str("="));
        }
    }

    fn raw(&mut self, text: &str) {
        if self.result.is_ok() {
            self.result = self.writer.write_str(text);
        }
    }
}

/// Whether `text` can be written unquoted: it has no space, quote,
/// backslash, `=` or control character (and is not empty).
fn plain(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'\\' && b != b'=' && b != 0x7f)
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.raw(" ");
            return self.raw(value);
        }
        self.name(field);
        if plain(value) {
            self.raw(value);
        } else if self.result.is_ok() {
            self.result = write!(self.writer, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.name(field);
        self.raw(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.name(field);
        self.raw(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.name(field);
        if value.is_finite() {
            self.raw(ryu::Buffer::new().format_finite(value));
        } else if self.result.is_ok() {
            self.result = write!(self.writer, "{value}");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.name(field);
        self.raw(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.raw(" ");
        } else {
            self.name(field);
        }
        if self.result.is_ok() {
            self.result = write!(self.writer, "{value:?}");
        }
    }
}

/// A [`MakeWriter`] that writes log lines in batches, from a thread of its
/// own: a line is appended to a shared buffer, and the thread writes the
/// buffer out when the first line of a batch has waited [`INTERVAL`] or
/// when [`BATCH`] bytes are waiting, whichever comes first.
///
/// Under load that is one `write` and one wake-up per batch rather than per
/// line (a line-per-message channel such as `tracing_appender::non_blocking`
/// wakes its thread for each line), and no allocation per line. An idle
/// process has no timer running. Nothing is dropped: when [`LIMIT`] bytes are
/// waiting (the output is slower than the lines), a logging thread waits for
/// the writing thread, so memory stays bounded.
///
/// Lines are written when the [`BatchGuard`] is dropped, too, so keep it
/// alive until the end of `main`; a line logged after that, or when the
/// process aborts, may be lost.
///
/// ```
/// use bbr_gateway::log::{BatchWriter, LineFormat};
///
/// let (writer, guard) = BatchWriter::new(std::io::stderr()).expect("a thread");
/// let subscriber = tracing_subscriber::fmt()
///     .event_format(LineFormat)
///     .with_writer(writer)
///     .finish();
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!(target: "gateway::access", status = 200u16, "request");
/// });
/// drop(guard); // writes what is waiting
/// ```
#[derive(Clone, Debug)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// How long the first line of a batch waits, at most, before it is written.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Bytes waiting that have the batch written before [`INTERVAL`] is out.
pub const BATCH: usize = 64 * 1024;
/// Bytes waiting beyond which logging threads wait for the writing thread.
pub const LIMIT: usize = 4 * 1024 * 1024;

/// Writes what is waiting and stops [`BatchWriter`]'s thread when dropped.
#[derive(Debug)]
#[must_use = "dropping the guard stops the writing thread"]
pub struct BatchGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The buffer a [`BatchWriter`] and its thread share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writing thread: a batch starts or fills, or it must stop.
    wake: Condvar,
    /// Wakes logging threads waiting for room.
    room: Condvar,
    interval: Duration,
    batch: usize,
    limit: usize,
}

#[derive(Debug, Default)]
struct State {
    lines: Vec<u8>,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held cannot leave `State` half-updated
        // (one `extend_from_slice` or `swap`): go on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl BatchWriter {
    /// A writer that sends its lines to `out` from a thread named
    /// `log-writer`; the error is the thread's spawn error.
    pub fn new<W: io::Write + Send + 'static>(out: W) -> io::Result<(BatchWriter, BatchGuard)> {
        BatchWriter::with_limits(out, INTERVAL, BATCH, LIMIT)
    }

    fn with_limits<W: io::Write + Send + 'static>(
        out: W,
        interval: Duration,
        batch: usize,
        limit: usize,
    ) -> io::Result<(BatchWriter, BatchGuard)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            room: Condvar::new(),
            interval,
            batch,
            limit,
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_batches(&shared, out)
            })?;
        let guard = BatchGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((BatchWriter { shared }, guard))
    }
}

/// The writing thread: waits for a batch to start, lets it fill for the
/// interval (or up to the batch size), writes it; until told to stop and
/// nothing is left.
fn write_batches(shared: &Shared, mut out: impl io::Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.lines.is_empty() && !state.stop {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.lines.is_empty() {
            return; // stopped, and everything written
        }
        let deadline = Instant::now() + shared.interval;
        while !state.stop && state.lines.len() < shared.batch {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            state = shared
                .wake
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut state.lines, &mut batch);
        drop(state);
        shared.room.notify_all();
        // Nowhere to report a failed write to: the log is the report.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // A burst's buffer is not kept for the rest of the run (a steady
        // load's, about twice a batch, is).
        if batch.capacity() > 4 * shared.batch {
            batch.shrink_to(shared.batch);
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer of one event: appends the line to the shared buffer.
#[derive(Debug)]
pub struct BatchLine<'a> {
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchLine<'a>;

    fn make_writer(&'a self) -> BatchLine<'a> {
        BatchLine {
            shared: &self.shared,
        }
    }
}

impl io::Write for BatchLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let shared = self.shared;
        let mut state = shared.lock();
        while state.lines.len() >= shared.limit && !state.stop {
            state = shared
                .room
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let before = state.lines.len();
        state.lines.extend_from_slice(bytes);
        let after = state.lines.len();
        drop(state);
        // The first line of a batch, or the one that fills it.
        if before == 0 || (before < shared.batch && after >= shared.batch) {
            shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The lines `emit` logs through a [`LineFormat`] subscriber.
    fn lines(ansi: bool, emit: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .event_format(LineFormat)
            .with_max_level(Level::TRACE)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The line without its timestamp (checked apart).
    fn after_timestamp(line: &str) -> &str {
        let (stamp, rest) = line.split_at(27);
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
        rest
    }

    #[test]
    fn writes_the_default_format_fields() {
        let out = lines(false, || {
            tracing::info!(
                target: "gateway::access",
                method = "POST",
                status = 200u16,
                model = "chatbot",
                held_bytes = 1024u64,
                delta = -3i64,
                ok = true,
                duration_ms = 0.574,
                "request"
            );
        });
        assert_eq!(
            after_timestamp(&out),
            "  INFO gateway::access: request method=POST status=200 model=chatbot \
             held_bytes=1024 delta=-3 ok=true duration_ms=0.574\n"
        );
    }

    #[test]
    fn quotes_strings_that_could_forge_a_field_or_a_line() {
        let out = lines(false, || {
            tracing::warn!(target: "t", model = "a b=c\nd", empty = "", "x");
        });
        assert_eq!(
            after_timestamp(&out),
            "  WARN t: x model=\"a b=c\\nd\" empty=\"\"\n"
        );
        assert_eq!(out.lines().count(), 1);
    }

    #[test]
    fn display_and_debug_values_and_formatted_messages() {
        let error = io::Error::other("pool down");
        let out = lines(false, || {
            tracing::error!(target: "t", error = %error, list = ?[1, 2], "failed {}", 3);
        });
        assert_eq!(
            after_timestamp(&out),
            " ERROR t: failed 3 error=pool down list=[1, 2]\n"
        );
    }

    #[test]
    fn spans_levels_and_colours() {
        let out = lines(false, || {
            let span = tracing::info_span!("conn");
            let _in = span.enter();
            tracing::debug!(target: "t", "d");
        });
        assert_eq!(after_timestamp(&out), " DEBUG conn: t: d\n");
        let out = lines(true, || tracing::trace!(target: "t", "x"));
        assert_eq!(after_timestamp(&out), "\x1b[35m TRACE \x1b[0mt: x\n");
    }

    /// An output that keeps each `write_all` apart; it can be held shut.
    #[derive(Clone, Default)]
    struct Writes {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        shut: Arc<Mutex<()>>,
    }

    impl io::Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_all(buf)?;
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let _open = self.shut.lock().unwrap();
            self.writes.lock().unwrap().push(buf.to_vec());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn all(&self) -> Vec<Vec<u8>> {
            self.writes.lock().unwrap().clone()
        }

        /// Waits (10 s at most) until `n` writes were made.
        fn wait_for(&self, n: usize) -> Vec<Vec<u8>> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let all = self.all();
                if all.len() >= n || Instant::now() > deadline {
                    return all;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn line(writer: &BatchWriter, text: &str) {
        io::Write::write_all(&mut writer.make_writer(), text.as_bytes()).unwrap();
    }

    #[test]
    fn batch_lines_wait_for_the_interval_and_come_out_in_one_write() {
        let out = Writes::default();
        let (writer, guard) =
            BatchWriter::with_limits(out.clone(), Duration::from_secs(3600), 1 << 20, 1 << 30)
                .unwrap();
        for n in 0..1000 {
            line(&writer, &format!("line {n}\n"));
        }
        assert!(out.all().is_empty(), "written before the interval");
        drop(guard);
        let writes = out.all();
        assert_eq!(writes.len(), 1);
        let text = String::from_utf8(writes[0].clone()).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn batch_is_written_when_full_or_when_the_interval_is_out() {
        // Full: 10 lines of 10 bytes fill a batch of 100, with the interval
        // an hour away.
        let out = Writes::default();
        let (writer, guard) =
            BatchWriter::with_limits(out.clone(), Duration::from_secs(3600), 100, 1 << 30).unwrap();
        for n in 0..10 {
            line(&writer, &format!("line {n:04}\n"));
        }
        let writes = out.wait_for(1);
        assert_eq!(writes.concat().len(), 100, "the full batch is written");
        drop(guard);
        // Out of time: one short line, written without the guard dropped.
        let out = Writes::default();
        let (writer, _guard) =
            BatchWriter::with_limits(out.clone(), Duration::from_millis(10), 1 << 20, 1 << 30)
                .unwrap();
        line(&writer, "alone\n");
        assert_eq!(out.wait_for(1), vec![b"alone\n".to_vec()]);
    }

    #[test]
    fn batch_waits_for_room_past_its_limit_and_drops_nothing() {
        // The output is held shut: the logging threads fill the buffer to
        // its limit (1 000 bytes) and wait; once it opens every line is
        // written, whole, and no write is larger than the limit plus a line.
        let out = Writes::default();
        let shut = out.shut.lock().unwrap();
        let (writer, guard) =
            BatchWriter::with_limits(out.clone(), Duration::from_millis(1), 100, 1000).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for n in 0..200 {
                        line(&writer, &format!("thread {t} line {n:03}\n"));
                    }
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while writer.shared.lock().lines.len() < 1000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(writer.shared.lock().lines.len() >= 1000, "the buffer fills");
        assert!(threads.iter().any(|t| !t.is_finished()), "loggers wait");
        drop(shut);
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let writes = out.all();
        let longest = "thread 0 line 000\n".len();
        assert!(writes.iter().all(|w| w.len() < 1000 + longest), "bounded");
        let text = String::from_utf8(writes.concat()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        for t in 0..4 {
            let own: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..200)
                .map(|n| format!("thread {t} line {n:03}"))
                .collect();
            assert_eq!(own, expected, "each thread's lines, whole and in order");
        }
        lines.sort_unstable();
        lines.dedup();
        assert_eq!(lines.len(), 800);
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let mut text = String::new();
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_764_689_223_814_391);
        timestamp(&mut Writer::new(&mut text), at).unwrap();
        assert_eq!(text, "2025-12-02T15:27:03.814391Z");
        text.clear();
        timestamp(&mut Writer::new(&mut text), UNIX_EPOCH).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00.000000Z");
        // The cached second of this thread is replaced, not reused.
        text.clear();
        let leap_day = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        timestamp(&mut Writer::new(&mut text), leap_day).unwrap();
        assert_eq!(text, "2000-02-29T00:00:00.000000Z");
    }
}

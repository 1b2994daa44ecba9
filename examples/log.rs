//! The gateway's log line format: a [`tracing_subscriber`] event formatter
//! that writes what the default `fmt` format writes, in the same order,
//! without going through `core::fmt` for each part.
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

use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The gateway's event format (see the [module](self) docs): colours only
/// when the subscriber's writer says it takes ANSI escapes.
///
/// ```
/// use bbr_examples::log::LineFormat;
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

//! The Go body-based router's own test tables, replayed against
//! bbr-extproc over gRPC as Envoy would send them.
//!
//! Each case is one row of a table in the Gateway API Inference Extension's
//! tests (v1.5.0: `test/integration/bbr/{hermetic_test,body_mutation_test}.go`,
//! `pkg/bbr/handlers/{request,server,response}_test.go`; v0.5.1:
//! `test/integration/bbr/hermetic_test.go`, `pkg/bbr/handlers/{request,server}_test.go`):
//! the messages the Go test sends, the server it builds (streaming or not,
//! with or without the base-model ConfigMap of its harness), and the replies
//! the Go router gives — facts transcribed from the tables. The cases run in
//! two message orders: with a request headers message before the body, and
//! with the body alone (Envoy's `request_header_mode: SKIP`). The Go
//! router's replies in the other order follow from its source: unbuffered
//! (`--streaming=false`) it answers a headers message with an empty headers
//! response, streaming it answers nothing until the body ends.
//!
//! A reply of bbr must be the Go router's, compared as Envoy reads it:
//! header names without regard to case, an explicit
//! `OVERWRITE_IF_EXISTS_OR_ADD` equal to the default, and an empty header
//! mutation equal to none (Envoy applies nothing from either). Otherwise
//! the case carries the reason bbr answers differently, and
//! `docs/extproc.md` lists it in its conformance table (checked here).
//! Cases that need a Go test plugin compiled into the router (a response
//! guardrail, a body mutator) are listed and not run.

mod support;

use std::{collections::BTreeMap, time::Duration};

use bbr_core::{
    ExtractorConfig,
    rules::{RuleTable, SharedRules},
};
use bbr_extproc::{
    BodyRoutingProcessor,
    pb::{
        self, HttpBody, HttpHeaders, ProcessingRequest,
        external_processor_client::ExternalProcessorClient, processing_request::Request,
        processing_response::Response,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Release {
    V1_5,
    V0_5,
}

impl Release {
    fn name(self) -> &'static str {
        match self {
            Release::V1_5 => "v1.5.0",
            Release::V0_5 => "v0.5.1",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Order {
    HeadersFirst,
    LoneBody,
}

impl Order {
    fn name(self) -> &'static str {
        match self {
            Order::HeadersFirst => "headers first",
            Order::LoneBody => "lone body",
        }
    }
}

/// One message of a case, as the Go test sends it.
#[derive(Clone, Debug)]
enum Msg {
    Headers(Vec<(&'static str, &'static str)>, bool),
    Body(Vec<u8>, bool),
    ResponseHeaders(Vec<(&'static str, &'static str)>, bool),
    ResponseBody(Vec<u8>, bool),
}

/// A body mutation of a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
enum BodyChange {
    Replaced(Vec<u8>),
    Chunk(Vec<u8>, bool),
}

/// A `CommonResponse` as Envoy applies it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct Common {
    /// Set headers: lowercase name → value, sorted.
    set: BTreeMap<String, Vec<u8>>,
    remove: Vec<String>,
    clear_route_cache: bool,
    body: Option<BodyChange>,
}

/// A reply, as Envoy reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    RequestHeaders(Option<Common>),
    RequestBody(Option<Common>),
    ResponseHeaders(Option<Common>),
    ResponseBody(Option<Common>),
    Immediate(i32),
    /// The server ended the gRPC stream with an error status.
    StreamError,
}

/// Why bbr answers a case differently, one reason per difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    ClearRouteCache,
    ContentLength,
    Chunks,
    EmptyBaseModel,
    NumericModel,
    StreamError,
    LoneBodyFullDuplex,
    ResponseChunks,
    ResponseHeadersAnswer,
}

impl Why {
    /// The reason's name in the table of `docs/extproc.md`.
    fn key(self) -> &'static str {
        match self {
            Why::ClearRouteCache => "clear-route-cache",
            Why::ContentLength => "content-length",
            Why::Chunks => "chunks",
            Why::EmptyBaseModel => "empty-base-model",
            Why::NumericModel => "numeric-model",
            Why::StreamError => "stream-error",
            Why::LoneBodyFullDuplex => "lone-body-full-duplex",
            Why::ResponseChunks => "response-chunks",
            Why::ResponseHeadersAnswer => "response-headers-answer",
        }
    }

    /// The reason, as the legend of `docs/extproc.md`'s table gives it.
    fn text(self) -> &'static str {
        match self {
            Why::ClearRouteCache => {
                "`clear_route_cache` only with a header change: on unchanged headers Envoy would pick the same route (v0.5.1 sends none either)"
            }
            Why::ContentLength => {
                "no `Content-Length` in full duplex: the body goes back byte for byte as it came, so the client's framing stays right (the Go router re-sends the body it collected)"
            }
            Why::Chunks => {
                "chunks go back as they arrive, checked, not collected and re-sent whole or in 62 000-byte pieces: memory stays bounded by the model's position"
            }
            Why::EmptyBaseModel => {
                "no `X-Gateway-Base-Model-Name` when no base model is known: an empty header names nothing, and a route matching on the header's presence would match every request"
            }
            Why::NumericModel => {
                "a number is refused with 400 `model_not_string` unless `--numeric-model` (then routed on its text, as the Go router does): no OpenAI-compatible server serves a number as a model name"
            }
            Why::StreamError => {
                "an error is the error contract's 400 `ImmediateResponse`, not an ended gRPC stream (which Envoy answers with 500)"
            }
            Why::LoneBodyFullDuplex => {
                "with no headers message in full duplex the routing rides on the first chunk sent back: Envoy ends the request with 500 on a headers response it did not ask for"
            }
            Why::ResponseChunks => {
                "response chunks go back as they arrive, so token streams keep flowing, not collected until the end"
            }
            Why::ResponseHeadersAnswer => {
                "each message is answered once, when it comes: the Go router adds a response headers answer when the response body ends"
            }
        }
    }
}

/// A case's reasons, by order.
#[derive(Clone, Debug, Default)]
struct Marks {
    both: Vec<Why>,
    lone_only: Vec<Why>,
}

/// How the Go test builds its server.
#[derive(Clone, Copy, Debug)]
struct Server {
    streaming: bool,
    /// bbr-extproc's `--numeric-model`: the Go router's reading of a
    /// numeric model, asked for.
    numeric_model: bool,
    /// The harness's ConfigMap: base model `qwen`, adapters
    /// `sql-lora-sheddable`, `foo`, `1`.
    adapters: bool,
}

const UNARY: Server = Server {
    streaming: false,
    numeric_model: false,
    adapters: false,
};
const STREAMING: Server = Server {
    streaming: true,
    numeric_model: false,
    adapters: false,
};
const HARNESS_UNARY: Server = Server {
    streaming: false,
    numeric_model: false,
    adapters: true,
};
const HARNESS_STREAMING: Server = Server {
    streaming: true,
    numeric_model: false,
    adapters: true,
};

#[derive(Clone, Debug)]
struct Case {
    release: Release,
    /// `file: Test/row`.
    name: String,
    server: Server,
    msgs: Vec<Msg>,
    /// The Go router's replies to `msgs`.
    go: Vec<Reply>,
    marks: Marks,
}

/// A case that needs a Go test plugin: listed, not run.
struct NotRun {
    release: Release,
    name: &'static str,
}

// ---- builders ----

fn case(release: Release, name: &str, server: Server, msgs: Vec<Msg>, go: Vec<Reply>) -> Case {
    Case {
        release,
        name: name.to_owned(),
        server,
        msgs,
        go,
        marks: Marks::default(),
    }
}

impl Case {
    fn differs(mut self, why: &[Why]) -> Case {
        self.marks.both.extend_from_slice(why);
        self
    }

    fn lone_differs(mut self, why: &[Why]) -> Case {
        self.marks.lone_only.extend_from_slice(why);
        self
    }

    fn marks(&self, order: Order) -> Vec<Why> {
        let mut all = self.marks.both.clone();
        if order == Order::LoneBody {
            all.extend_from_slice(&self.marks.lone_only);
        }
        all
    }

    fn has_body(&self) -> bool {
        self.msgs.iter().any(|m| matches!(m, Msg::Body(..)))
    }

    fn starts_with_headers(&self) -> bool {
        matches!(self.msgs.first(), Some(Msg::Headers(_, false)))
    }
}

/// `json.Marshal` of a Go `map[string]any`: keys sorted, no spaces.
fn go_json(pairs: &[(&str, serde_json::Value)]) -> Vec<u8> {
    let map: BTreeMap<&str, &serde_json::Value> = pairs.iter().map(|(k, v)| (*k, v)).collect();
    serde_json::to_vec(&map).unwrap()
}

/// `integration.GenerateRequest(prompt, model)`.
fn llm_request(prompt: &str, model: &str) -> Vec<u8> {
    let mut pairs = vec![
        ("prompt", prompt.into()),
        ("max_tokens", 100.into()),
        ("temperature", 0.into()),
    ];
    if !model.is_empty() {
        pairs.push(("model", model.into()));
    }
    go_json(&pairs)
}

fn body(b: &[u8]) -> Msg {
    Msg::Body(b.to_vec(), true)
}

fn chunk(b: &[u8], eos: bool) -> Msg {
    Msg::Body(b.to_vec(), eos)
}

fn set(headers: &[(&str, &str)]) -> Common {
    Common {
        set: headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect(),
        ..Default::default()
    }
}

/// A routing mutation: these headers and `clear_route_cache`.
fn route(headers: &[(&str, &str)]) -> Common {
    Common {
        clear_route_cache: true,
        ..set(headers)
    }
}

fn body_reply(c: Common) -> Reply {
    Reply::RequestBody(Some(c))
}

fn headers_reply(c: Common) -> Reply {
    Reply::RequestHeaders(Some(c))
}

fn streamed(b: &[u8], eos: bool) -> Reply {
    Reply::RequestBody(Some(Common {
        body: Some(BodyChange::Chunk(b.to_vec(), eos)),
        ..Default::default()
    }))
}

fn response_streamed(b: &[u8], eos: bool) -> Reply {
    Reply::ResponseBody(Some(Common {
        body: Some(BodyChange::Chunk(b.to_vec(), eos)),
        ..Default::default()
    }))
}

const MODEL: &str = "X-Gateway-Model-Name";
const BASE: &str = "X-Gateway-Base-Model-Name";
const LENGTH: &str = "Content-Length";

fn len(b: &[u8]) -> String {
    b.len().to_string()
}

// ---- the tables ----

fn v1_5() -> (Vec<Case>, Vec<NotRun>) {
    use Release::V1_5 as R;
    let mut cases = Vec::new();

    // test/integration/bbr/hermetic_test.go
    let qwen = llm_request("test", "qwen");
    cases.push(case(
        R,
        "hermetic_test.go: TestBodyBasedRouting/success: extracts model and sets header",
        HARNESS_UNARY,
        vec![body(&qwen)],
        vec![body_reply(route(&[(MODEL, "qwen"), (BASE, "qwen")]))],
    ));
    cases.push(
        case(
            R,
            "hermetic_test.go: TestBodyBasedRouting/no model parameter in body - skips gracefully",
            HARNESS_UNARY,
            vec![body(&llm_request("test1", ""))],
            vec![body_reply(route(&[]))],
        )
        .differs(&[Why::ClearRouteCache]),
    );
    cases.push(case(
        R,
        "hermetic_test.go: TestResponsePlugins/no plugins: response passes through unchanged",
        HARNESS_UNARY,
        vec![
            body(&qwen),
            Msg::ResponseHeaders(vec![("content-type", "application/json")], false),
            Msg::ResponseBody(br#"{"choices":[{"text":"Hi there!"}]}"#.to_vec(), true),
        ],
        vec![
            body_reply(route(&[(MODEL, "qwen"), (BASE, "qwen")])),
            Reply::ResponseHeaders(None),
            Reply::ResponseBody(None),
        ],
    ));
    let llm_headers = vec![
        ("hi", "mom"),
        ("x-request-id", "test-request-id"),
        ("x-gateway-inference-objective", "foo"),
        ("x-gateway-model-name-rewrite", "bar"),
    ];
    let foo_body = llm_request("test", "foo");
    cases.push(
        case(
            R,
            "hermetic_test.go: TestFullDuplexStreamed_BodyBasedRouting/success: adds model header from simple body",
            HARNESS_STREAMING,
            vec![Msg::Headers(llm_headers.clone(), false), body(&foo_body)],
            vec![
                headers_reply(route(&[(LENGTH, "64"), (BASE, "qwen"), (MODEL, "foo")])),
                streamed(&foo_body, true),
            ],
        )
        .differs(&[Why::ContentLength])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let (one, two) = (
        br#"{"max_tokens":100,"model":"sql-lo"#,
        br#"ra-sheddable","prompt":"test","temperature":0}"#,
    );
    cases.push(
        case(
            R,
            "hermetic_test.go: TestFullDuplexStreamed_BodyBasedRouting/success: buffers split chunks and extracts model",
            HARNESS_STREAMING,
            vec![
                Msg::Headers(vec![("hi", "mom")], false),
                chunk(one, false),
                chunk(two, true),
            ],
            vec![
                headers_reply(route(&[
                    (LENGTH, "79"),
                    (BASE, "qwen"),
                    (MODEL, "sql-lora-sheddable"),
                ])),
                streamed(&[&one[..], &two[..]].concat(), true),
            ],
        )
        .differs(&[Why::ContentLength, Why::Chunks])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let no_model = llm_request("test", "");
    cases.push(
        case(
            R,
            "hermetic_test.go: TestFullDuplexStreamed_BodyBasedRouting/missing model field - skips gracefully",
            HARNESS_STREAMING,
            vec![
                Msg::Headers(vec![("hi", "mom"), ("x-request-id", "test-request-id")], false),
                body(&no_model),
            ],
            vec![
                headers_reply(route(&[(LENGTH, "50")])),
                streamed(&no_model, true),
            ],
        )
        .differs(&[Why::ContentLength])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );

    // pkg/bbr/handlers/request_test.go: TestHandleRequestHeaders (headers only)
    // (row, streaming, end of stream, headers)
    type HeadersRow = (&'static str, bool, bool, Vec<(&'static str, &'static str)>);
    let headers_cases: [HeadersRow; 8] = [
        (
            "headers response in non-streaming",
            false,
            false,
            vec![
                ("content-type", "application/json"),
                ("x-request-id", "abc-123"),
            ],
        ),
        (
            "extracts headers in streaming, but not end of stream",
            true,
            false,
            vec![
                ("content-type", "application/json"),
                ("x-request-id", "abc-123"),
            ],
        ),
        (
            "extracts headers in streaming and end of stream",
            true,
            true,
            vec![
                ("content-type", "application/json"),
                ("x-request-id", "abc-123"),
            ],
        ),
        (
            "prefers RawValue over Value",
            false,
            false,
            vec![("x-test", "raw")],
        ),
        (
            "falls back to Value when RawValue is empty",
            false,
            false,
            vec![("x-test", "plain")],
        ),
        ("nil headers", false, false, vec![]),
        ("nil header map", false, false, vec![]),
        ("empty header map", false, false, vec![]),
    ];
    for (row, streaming, eos, headers) in headers_cases {
        let go = if streaming && !eos {
            vec![]
        } else {
            vec![Reply::RequestHeaders(None)]
        };
        cases.push(case(
            R,
            &format!("request_test.go: TestHandleRequestHeaders/{row}"),
            Server {
                streaming,
                numeric_model: false,
                adapters: false,
            },
            vec![Msg::Headers(headers, eos)],
            go,
        ));
    }

    // pkg/bbr/handlers/request_test.go: TestHandleRequestBody
    let joke = go_json(&[("prompt", "Tell me a joke".into())]);
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model not found - skips gracefully",
            UNARY,
            vec![body(&joke)],
            vec![body_reply(route(&[]))],
        )
        .differs(&[Why::ClearRouteCache]),
    );
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model not found with streaming - skips gracefully",
            STREAMING,
            vec![body(&joke)],
            vec![
                headers_reply(route(&[(LENGTH, "27")])),
                streamed(&joke, true),
            ],
        )
        .differs(&[Why::ContentLength])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let empty = go_json(&[("model", "".into()), ("prompt", "Tell me a joke".into())]);
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model in body but empty - skips gracefully",
            UNARY,
            vec![body(&empty)],
            vec![body_reply(route(&[(BASE, "")]))],
        )
        .differs(&[Why::EmptyBaseModel, Why::ClearRouteCache]),
    );
    let numeric = go_json(&[("model", 1.into()), ("prompt", "Tell me a joke".into())]);
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model is not string, success after it's being auto converted to string",
            UNARY,
            vec![body(&numeric)],
            vec![body_reply(route(&[(MODEL, "1"), (BASE, "")]))],
        )
        .differs(&[Why::NumericModel]),
    );
    // The same row with --numeric-model: routed on "1" as the Go router
    // routes it.
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model is not string, success after it's being auto converted to string [--numeric-model]",
            Server {
                numeric_model: true,
                ..UNARY
            },
            vec![body(&numeric)],
            vec![body_reply(route(&[(MODEL, "1"), (BASE, "")]))],
        )
        .differs(&[Why::EmptyBaseModel]),
    );
    let foo_joke = go_json(&[("model", "foo".into()), ("prompt", "Tell me a joke".into())]);
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/success",
            UNARY,
            vec![body(&foo_joke)],
            vec![body_reply(route(&[(MODEL, "foo"), (BASE, "")]))],
        )
        .differs(&[Why::EmptyBaseModel]),
    );
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/success-with-streaming",
            STREAMING,
            vec![body(&foo_joke)],
            vec![
                headers_reply(route(&[
                    (LENGTH, &len(&foo_joke)),
                    (MODEL, "foo"),
                    (BASE, ""),
                ])),
                streamed(&foo_joke, true),
            ],
        )
        .differs(&[Why::ContentLength, Why::EmptyBaseModel])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let large = go_json(&[
        ("model", "foo".into()),
        ("prompt", "a".repeat(70_000).into()),
    ]);
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/success-with-streaming-large-body",
            STREAMING,
            vec![body(&large)],
            vec![
                headers_reply(route(&[(LENGTH, &len(&large)), (MODEL, "foo"), (BASE, "")])),
                streamed(&large[..62_000], false),
                streamed(&large[62_000..], true),
            ],
        )
        .differs(&[Why::ContentLength, Why::EmptyBaseModel, Why::Chunks])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );

    // pkg/bbr/handlers/server_test.go
    let just_foo = go_json(&[("model", "foo".into())]);
    cases.push(
        case(
            R,
            "server_test.go: TestHandleRequestBodyStreaming/no-streaming",
            UNARY,
            vec![body(&just_foo)],
            vec![body_reply(route(&[(MODEL, "foo"), (BASE, "")]))],
        )
        .differs(&[Why::EmptyBaseModel]),
    );
    cases.push(
        case(
            R,
            "server_test.go: TestHandleRequestBodyStreaming/streaming",
            STREAMING,
            vec![body(&just_foo)],
            vec![
                headers_reply(route(&[
                    (LENGTH, &len(&just_foo)),
                    (MODEL, "foo"),
                    (BASE, ""),
                ])),
                streamed(&just_foo, true),
            ],
        )
        .differs(&[Why::ContentLength, Why::EmptyBaseModel])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let hello = br#"{"choices":[{"text":"Hello!"}]}"#;
    let response_headers = Msg::ResponseHeaders(
        vec![
            ("x-test", "body"),
            (":method", "POST"),
            ("content-type", "text/event-stream"),
        ],
        false,
    );
    let splits: [(&str, Vec<&[u8]>); 3] = [
        ("single chunk with EoS", vec![hello]),
        (
            "split JSON across two chunks, EoS on last",
            vec![br#"{"choices":[{"te"#, br#"xt":"Hello!"}]}"#],
        ),
        (
            "fragmented: three chunks, EoS on last",
            vec![br#"{"choices":"#, br#"[{"text":"Hello!"}]"#, b"}"],
        ),
    ];
    for (row, parts) in splits {
        let n = parts.len();
        let mut msgs = vec![response_headers.clone()];
        msgs.extend(
            parts
                .iter()
                .enumerate()
                .map(|(i, p)| Msg::ResponseBody(p.to_vec(), i + 1 == n)),
        );
        let c = case(
            R,
            &format!("server_test.go: TestHandleResponseBody_Streaming/{row}"),
            STREAMING,
            msgs,
            vec![Reply::ResponseHeaders(None), response_streamed(hello, true)],
        );
        cases.push(if n > 1 {
            c.differs(&[Why::ResponseChunks])
        } else {
            c
        });
    }

    // pkg/bbr/handlers/response_test.go
    cases.push(case(
        R,
        "response_test.go: TestHandleResponseBody_NoPlugins/unary",
        UNARY,
        vec![Msg::ResponseBody(hello.to_vec(), true)],
        vec![Reply::ResponseBody(None)],
    ));
    cases.push(
        case(
            R,
            "response_test.go: TestHandleResponseBody_NoPlugins/streaming",
            STREAMING,
            vec![Msg::ResponseBody(hello.to_vec(), true)],
            vec![Reply::ResponseHeaders(None), response_streamed(hello, true)],
        )
        .differs(&[Why::ResponseHeadersAnswer]),
    );

    let not_run = [
        "hermetic_test.go: TestResponsePlugins/response plugin mutates response body",
        "body_mutation_test.go: TestBodyMutation_Unary",
        "body_mutation_test.go: TestBodyMutation_Streaming",
        "request_test.go: TestHandleRequestBody_BodyMutation/unary with body mutation",
        "request_test.go: TestHandleRequestBody_BodyMutation/streaming with body mutation",
        "response_test.go: TestHandleResponseBody_SinglePlugin",
        "response_test.go: TestHandleResponseBody_MultiplePlugins",
        "response_test.go: TestHandleResponseBody_PluginError",
        "response_test.go: TestHandleResponseBody_StreamingWithPlugin",
        "response_test.go: TestHandleResponseBody_PluginNoBodyMutation/unary - header-only plugin skips body mutation",
        "response_test.go: TestHandleResponseBody_PluginNoBodyMutation/streaming - header-only plugin passes original body",
    ]
    .map(|name| NotRun { release: R, name });
    (cases, not_run.into())
}

fn v0_5() -> Vec<Case> {
    use Release::V0_5 as R;
    let mut cases = Vec::new();

    // test/integration/bbr/hermetic_test.go
    cases.push(case(
        R,
        "hermetic_test.go: TestBodyBasedRouting/success adding model parameter to header",
        UNARY,
        vec![body(&llm_request("test", "llama"))],
        vec![body_reply(route(&[(MODEL, "llama")]))],
    ));
    cases.push(case(
        R,
        "hermetic_test.go: TestBodyBasedRouting/no model parameter",
        UNARY,
        vec![body(&llm_request("test1", ""))],
        vec![Reply::RequestBody(None)],
    ));
    let foo_body = llm_request("test", "foo");
    cases.push(
        case(
            R,
            "hermetic_test.go: TestFullDuplexStreamed_BodyBasedRouting/success adding model parameter to header",
            STREAMING,
            vec![Msg::Headers(vec![("hi", "mom")], false), body(&foo_body)],
            vec![headers_reply(route(&[(MODEL, "foo")])), streamed(&foo_body, true)],
        )
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let (one, two) = (
        br#"{"max_tokens":100,"model":"sql-lo"#,
        br#"ra-sheddable","prompt":"test","temperature":0}"#,
    );
    cases.push(
        case(
            R,
            "hermetic_test.go: TestFullDuplexStreamed_BodyBasedRouting/success adding model parameter to header with multiple body chunks",
            STREAMING,
            vec![
                Msg::Headers(vec![("hi", "mom")], false),
                chunk(one, false),
                chunk(two, true),
            ],
            vec![
                headers_reply(route(&[(MODEL, "sql-lora-sheddable")])),
                streamed(&[&one[..], &two[..]].concat(), true),
            ],
        )
        .differs(&[Why::Chunks])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    let no_model = llm_request("test", "");
    cases.push(
        case(
            R,
            "hermetic_test.go: TestFullDuplexStreamed_BodyBasedRouting/no model parameter",
            STREAMING,
            vec![Msg::Headers(vec![("hi", "mom")], false), body(&no_model)],
            vec![Reply::RequestHeaders(None), streamed(&no_model, true)],
        )
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );

    // pkg/bbr/handlers/request_test.go: TestHandleRequestBody
    let joke = go_json(&[("prompt", "Tell me a joke".into())]);
    cases.push(case(
        R,
        "request_test.go: TestHandleRequestBody/model not found",
        UNARY,
        vec![body(&joke)],
        vec![Reply::RequestBody(None)],
    ));
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model not found with streaming",
            STREAMING,
            vec![body(&joke)],
            vec![Reply::RequestHeaders(None), streamed(&joke, true)],
        )
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/model is not string",
            UNARY,
            vec![body(&go_json(&[
                ("model", 1.into()),
                ("prompt", "Tell me a joke".into()),
            ]))],
            vec![Reply::StreamError],
        )
        .differs(&[Why::StreamError]),
    );
    let foo_joke = go_json(&[("model", "foo".into()), ("prompt", "Tell me a joke".into())]);
    cases.push(case(
        R,
        "request_test.go: TestHandleRequestBody/success",
        UNARY,
        vec![body(&foo_joke)],
        vec![body_reply(route(&[(MODEL, "foo")]))],
    ));
    cases.push(
        case(
            R,
            "request_test.go: TestHandleRequestBody/success-with-streaming",
            STREAMING,
            vec![body(&foo_joke)],
            vec![
                headers_reply(route(&[(MODEL, "foo")])),
                streamed(&foo_joke, true),
            ],
        )
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );

    // pkg/bbr/handlers/server_test.go: TestProcessRequestBody
    let just_foo = go_json(&[("model", "foo".into())]);
    cases.push(case(
        R,
        "server_test.go: TestProcessRequestBody/no-streaming",
        UNARY,
        vec![body(&just_foo)],
        vec![body_reply(route(&[(MODEL, "foo")]))],
    ));
    cases.push(
        case(
            R,
            "server_test.go: TestProcessRequestBody/streaming",
            STREAMING,
            vec![chunk(&just_foo, false), chunk(b"", true)],
            vec![
                headers_reply(route(&[(MODEL, "foo")])),
                streamed(&just_foo, true),
            ],
        )
        .differs(&[Why::Chunks])
        .lone_differs(&[Why::LoneBodyFullDuplex]),
    );
    cases
}

// ---- running ----

/// The messages of `case` in `order`, and the Go router's replies to them;
/// `None` when the order does not apply (no request body to send alone).
fn in_order(case: &Case, order: Order) -> Option<(Vec<Msg>, Vec<Reply>)> {
    let mut msgs = case.msgs.clone();
    let mut go = case.go.clone();
    let unbuffered_headers_answer = !case.server.streaming;
    match order {
        Order::HeadersFirst => {
            if case.has_body() && !case.starts_with_headers() {
                msgs.insert(
                    0,
                    Msg::Headers(
                        vec![
                            (":method", "POST"),
                            (":path", "/v1/completions"),
                            ("content-type", "application/json"),
                        ],
                        false,
                    ),
                );
                if unbuffered_headers_answer {
                    go.insert(0, Reply::RequestHeaders(None));
                }
            }
        }
        Order::LoneBody => {
            if !case.has_body() {
                return None;
            }
            if case.starts_with_headers() {
                msgs.remove(0);
                if unbuffered_headers_answer {
                    assert_eq!(go.remove(0), Reply::RequestHeaders(None), "{}", case.name);
                }
            }
        }
    }
    Some((msgs, go))
}

fn header_map(headers: &[(&str, &str)], eos: bool) -> HttpHeaders {
    support::http_headers(headers, eos)
}

fn to_request(msg: &Msg) -> ProcessingRequest {
    let request = match msg {
        Msg::Headers(h, eos) => Request::RequestHeaders(header_map(h, *eos)),
        Msg::Body(b, eos) => Request::RequestBody(HttpBody {
            body: b.clone(),
            end_of_stream: *eos,
            ..Default::default()
        }),
        Msg::ResponseHeaders(h, eos) => Request::ResponseHeaders(header_map(h, *eos)),
        Msg::ResponseBody(b, eos) => Request::ResponseBody(HttpBody {
            body: b.clone(),
            end_of_stream: *eos,
            ..Default::default()
        }),
    };
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

fn canonical_common(c: Option<pb::CommonResponse>) -> Option<Common> {
    let c = c?;
    let mut out = Common {
        clear_route_cache: c.clear_route_cache,
        ..Default::default()
    };
    if let Some(m) = c.header_mutation {
        for o in m.set_headers {
            let action = o.append_action;
            // APPEND_IF_EXISTS_OR_ADD (the default) and OVERWRITE_IF_EXISTS_OR_ADD.
            assert!(action == 0 || action == 2, "append action {action}");
            let h = o.header.expect("a header to set");
            let value = if h.raw_value.is_empty() {
                h.value.into_bytes()
            } else {
                h.raw_value
            };
            out.set.insert(h.key.to_ascii_lowercase(), value);
        }
        out.remove = m
            .remove_headers
            .into_iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        out.remove.sort();
    }
    out.body = c.body_mutation.and_then(|b| b.mutation).map(|m| match m {
        pb::body_mutation::Mutation::Body(b) => BodyChange::Replaced(b),
        pb::body_mutation::Mutation::StreamedResponse(s) => {
            BodyChange::Chunk(s.body, s.end_of_stream)
        }
        other => panic!("unexpected body mutation {other:?}"),
    });
    Some(out)
}

fn canonical(r: Response) -> Reply {
    match r {
        Response::RequestHeaders(h) => Reply::RequestHeaders(canonical_common(h.response)),
        Response::RequestBody(b) => Reply::RequestBody(canonical_common(b.response)),
        Response::ResponseHeaders(h) => Reply::ResponseHeaders(canonical_common(h.response)),
        Response::ResponseBody(b) => Reply::ResponseBody(canonical_common(b.response)),
        Response::ImmediateResponse(i) => Reply::Immediate(i.status.map(|s| s.code).unwrap_or(0)),
        other => panic!("unexpected reply {other:?}"),
    }
}

/// An empty common response (or an empty header mutation in it) is
/// nothing to Envoy.
fn envoy_reads(reply: Reply) -> Reply {
    let norm = |c: Option<Common>| c.filter(|c| *c != Common::default());
    match reply {
        Reply::RequestHeaders(c) => Reply::RequestHeaders(norm(c)),
        Reply::RequestBody(c) => Reply::RequestBody(norm(c)),
        Reply::ResponseHeaders(c) => Reply::ResponseHeaders(norm(c)),
        Reply::ResponseBody(c) => Reply::ResponseBody(norm(c)),
        other => other,
    }
}

/// The processor standing for the Go test's server.
fn processor(server: Server) -> BodyRoutingProcessor {
    let mut table = RuleTable::builder();
    if server.adapters {
        table = table.base_models_yaml(
            "baseModel: qwen\nadapters: |\n  - sql-lora-sheddable\n  - foo\n  - 1\n",
        );
    }
    BodyRoutingProcessor::builder()
        .extractor(ExtractorConfig::new().with_numeric_model(server.numeric_model))
        .streaming(server.streaming)
        .rules(SharedRules::new(table.build().unwrap()))
        .build()
}

/// bbr's replies to `msgs`: everything sent, the request side closed, and
/// every reply read until the server ends the stream.
async fn replies(server: Server, msgs: &[Msg]) -> Vec<Reply> {
    let mut client: ExternalProcessorClient<_> = support::serve(processor(server)).await;
    let (tx, rx) = mpsc::channel(msgs.len().max(1));
    for m in msgs {
        tx.send(to_request(m)).await.unwrap();
    }
    drop(tx);
    let mut stream = client
        .process(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(msg))) => out.push(envoy_reads(canonical(msg.response.expect("a reply")))),
            Ok(Ok(None)) => break,
            Ok(Err(_)) => {
                out.push(Reply::StreamError);
                break;
            }
            Err(_) => panic!("no end of stream in time after {out:?}"),
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    same: usize,
    deliberate: usize,
}

#[tokio::test]
async fn the_go_routers_test_tables() {
    let (mut cases, not_run) = v1_5();
    cases.extend(v0_5());
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/extproc.md"),
    )
    .unwrap();

    let mut counts: BTreeMap<(Release, Order), Tally> = BTreeMap::new();
    let mut flagged: BTreeMap<(Release, Order), Tally> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        for order in [Order::HeadersFirst, Order::LoneBody] {
            let Some((msgs, go)) = in_order(case, order) else {
                continue;
            };
            let go: Vec<Reply> = go.into_iter().map(envoy_reads).collect();
            let got = replies(case.server, &msgs).await;
            let marks = case.marks(order);
            // A row replayed with a bbr flag is counted apart: the tables'
            // counts are the Go rows as they are.
            let tally = match case.server.numeric_model {
                false => counts.entry((case.release, order)).or_default(),
                true => flagged.entry((case.release, order)).or_default(),
            };
            let label = format!("{} {} ({})", case.release.name(), case.name, order.name());
            match (got == go, marks.is_empty()) {
                (true, true) => tally.same += 1,
                (false, false) => {
                    tally.deliberate += 1;
                    for why in &marks {
                        let key = format!("`{}`", why.key());
                        let listed = docs.lines().any(|line| {
                            line.contains(case.name.as_str())
                                && line.contains(case.release.name())
                                && line.contains(&key)
                        }) && docs
                            .lines()
                            .any(|line| line.contains(&key) && line.contains(why.text()));
                        if !listed {
                            failures.push(format!(
                                "{label}: not in the conformance table of docs/extproc.md with {why:?}"
                            ));
                        }
                    }
                }
                (true, false) => failures.push(format!(
                    "{label}: marked {marks:?} but the replies are the Go router's"
                )),
                (false, true) => failures.push(format!("{label}:\n  go:  {go:?}\n  bbr: {got:?}")),
            }
        }
    }
    if std::env::var_os("BBR_CONFORMANCE_TABLE").is_some() {
        // The rows of the table in docs/extproc.md.
        for case in &cases {
            let text = |w: &[Why]| {
                w.iter()
                    .map(|w| format!("`{}`", w.key()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !case.marks.both.is_empty() {
                let order = match in_order(case, Order::LoneBody) {
                    Some(_) => "both",
                    None => "headers first",
                };
                eprintln!(
                    "| {} | {} | {order} | {} |",
                    case.release.name(),
                    case.name,
                    text(&case.marks.both)
                );
            }
            if !case.marks.lone_only.is_empty() {
                eprintln!(
                    "| {} | {} | lone body | {} |",
                    case.release.name(),
                    case.name,
                    text(&case.marks.lone_only)
                );
            }
        }
    }
    eprintln!("conformance with the Go router's test tables (same / deliberate):");
    for ((release, order), t) in &counts {
        eprintln!(
            "  {} {:<13} {:>2} same, {:>2} deliberate",
            release.name(),
            order.name(),
            t.same,
            t.deliberate
        );
    }
    for ((release, order), t) in &flagged {
        eprintln!(
            "  {} {:<13} with --numeric-model: {} same, {} deliberate",
            release.name(),
            order.name(),
            t.same,
            t.deliberate
        );
    }
    eprintln!(
        "  not run (they need a Go test plugin compiled into the router): {}",
        not_run.len()
    );
    for n in &not_run {
        if !docs.contains(n.name) {
            failures.push(format!(
                "{} {}: not run, and not listed in docs/extproc.md",
                n.release.name(),
                n.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The Go router v1.5's metrics test counts its seven `TestHandleRequestBody`
/// bodies in `bbr_success_total`; bbr counts the same bodies the same way,
/// but for the numeric model it refuses, and the routed ones apart.
#[tokio::test]
async fn the_go_routers_metrics_test_counts_alike() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The test runtime is single-threaded: the service records on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (cases, _) = v1_5();
    let bodies: Vec<&Case> = cases
        .iter()
        .filter(|c| {
            c.name
                .starts_with("request_test.go: TestHandleRequestBody/")
                && !c.server.numeric_model
        })
        .collect();
    assert_eq!(bodies.len(), 7);
    for case in bodies {
        let (msgs, _) = in_order(case, Order::HeadersFirst).unwrap();
        replies(case.server, &msgs).await;
    }
    let text = handle.render();
    for line in [
        // Go: 7, with the numeric model routed as "1".
        "bbr_success_total 6",
        "bbr_routed_total 3",
        "bbr_body_field_empty_total{field=\"model\"} 1",
        "bbr_body_field_not_found_total{field=\"model\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

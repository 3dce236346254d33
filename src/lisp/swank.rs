//! An async swank client: it owns the wire protocol windlass speaks to a running Lisp
//! image (`windlass repl`, `reload = "in-place"`, Lisp metrics). Each message is six
//! lowercase hex digits (the UTF-8 byte length) then one s-expression. `eval` sends
//! `(:emacs-rex (swank:eval-and-grab-output "FORM") "PACKAGE" t ID)` and waits for the
//! matching `:return`, collecting `:write-string` output, answering `:ping` with
//! `:emacs-pong`, and answering `:debug` (an error reached swank's debugger) with
//! `sldb-abort` so the image never sits in the debugger; the condition text from the
//! `:debug` message is reported. Replies are untrusted: bad framing or syntax is an
//! error, never a panic; every call has a deadline. A message is at most [`MAX_MESSAGE`]
//! bytes (swank's own limit, the most six hex digits can say); its payload is read in
//! chunks of at most [`CHUNK`] bytes, so memory follows what actually arrived, never the
//! length the peer announced; the reader then bounds nesting and node count
//! ([`sexp::MAX_DEPTH`], [`sexp::MAX_NODES`]).
//!
//! Reload: compiler diagnostics go to the app's stderr, not to swank, so
//! [`swank_eval_script`] wraps the reload form to collect warnings, the error and the
//! diagnostics text (by binding `*error-output*`) into its return value. The default
//! reload form ([`reload_form`]) is `(asdf:load-system "SYSTEM")`, not `:force t`:
//! forcing recompiles and reloads every file, re-running every `defparameter` and
//! top-level side effect of unchanged files; incremental loading recompiles changed
//! files and what depends on them. Because ASDF judges staleness with one-second
//! timestamps, the form first deletes the fasl of any source written in the same second
//! as (or after) its fasl, so a quick edit right after a compile is not missed (the compile
//! step of a restart or blue-green reload does the same: `forget-stale-fasls` in
//! `runtime.lisp`). Inside a
//! built executable there are no sources: use a `(load "patch.lisp")` form instead.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::lisp::sexp::{self, Sexp, SexpError};
use crate::protocol::LispMetrics;

/// Messages larger than this are refused (swank's own limit, 2^24 - 1 bytes).
pub const MAX_MESSAGE: usize = 0xFF_FFFF;
/// The most a message's buffer grows by per read.
pub const CHUNK: usize = 64 * 1024;
/// The package evaluation happens in unless told otherwise.
pub const DEFAULT_PACKAGE: &str = "COMMON-LISP-USER";

/// A failed swank exchange.
#[derive(Debug, thiserror::Error)]
pub enum SwankError {
    #[error("cannot connect to swank at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("swank connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("swank closed the connection")]
    Closed,
    #[error("no swank reply within {0:?}")]
    Timeout(Duration),
    #[error("bad swank message: {0}")]
    Protocol(String),
    #[error("unreadable swank message: {0}")]
    Syntax(#[from] SexpError),
    #[error("the evaluation signalled an error: {condition}")]
    LispError { condition: String, output: String },
    #[error("the evaluation was aborted: {reason}")]
    Aborted { reason: String, output: String },
    #[error("swank rejected the request: {0}")]
    Rejected(String),
}

/// What `eval-and-grab-output` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalResult {
    /// Everything the form printed (`*standard-output*` and `:write-string`s).
    pub output: String,
    /// The printed values (`~S`), one per line.
    pub value: String,
}

/// Result of an in-place reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// True when the reload form completed without an error.
    pub ok: bool,
    /// The error's type and text, when it failed.
    pub error: Option<String>,
    /// Warnings signalled while reloading (`TYPE: text`).
    pub warnings: Vec<String>,
    /// What the compiler wrote to `*error-output*` (also still sent to the app's stderr).
    pub diagnostics: String,
    /// What the reload printed to `*standard-output*`.
    pub output: String,
}

/// One connection to a swank server.
pub struct SwankClient {
    stream: BufReader<TcpStream>,
    next_id: u64,
    timeout: Duration,
}

impl std::fmt::Debug for SwankClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwankClient")
            .field("peer", &self.stream.get_ref().peer_addr().ok())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SwankClient {
    /// Connect with a 30 s default deadline per request.
    pub async fn connect(addr: SocketAddr) -> Result<SwankClient, SwankError> {
        SwankClient::connect_with_secret(addr, None).await
    }

    /// Connect, sending the `~/.slime-secret` text first when the server wants one.
    pub async fn connect_with_secret(
        addr: SocketAddr,
        secret: Option<&str>,
    ) -> Result<SwankClient, SwankError> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| SwankError::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|source| SwankError::Connect { addr, source })?;
        // Small request/reply messages: no Nagle delay. Failing to set it is harmless.
        let _ = stream.set_nodelay(true);
        let mut client = SwankClient {
            stream: BufReader::new(stream),
            next_id: 1,
            timeout: Duration::from_secs(30),
        };
        if let Some(secret) = secret {
            client.send(&Sexp::string_literal(secret)).await?;
        }
        Ok(client)
    }

    /// Deadline for each following request.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Evaluate `form` (Lisp source text) in `package` and return its output and values.
    pub async fn eval(&mut self, form: &str, package: &str) -> Result<EvalResult, SwankError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.eval_inner(form, package))
            .await
            .map_err(|_| SwankError::Timeout(timeout))?
    }

    async fn eval_inner(&mut self, form: &str, package: &str) -> Result<EvalResult, SwankError> {
        let id = self.take_id();
        let request = format!(
            "(:emacs-rex (swank:eval-and-grab-output {}) {} t {id})",
            Sexp::string_literal(form),
            Sexp::string_literal(package)
        );
        self.send(&request).await?;
        let mut output = String::new();
        let mut condition: Option<String> = None;
        loop {
            let message = self.receive().await?;
            let items = message
                .as_list()
                .filter(|items| !items.is_empty())
                .ok_or_else(|| SwankError::Protocol(format!("not a non-empty list: {message}")))?;
            let head = &items[0];
            if head.is_keyword("return") {
                if items.get(2).and_then(Sexp::as_i64) != Some(id as i64) {
                    continue; // the reply to an sldb-abort or an older, timed-out request
                }
                let result = items.get(1).and_then(Sexp::as_list).unwrap_or(&[]);
                let kind = result.first();
                if kind.is_some_and(|k| k.is_keyword("ok")) {
                    let pair = result.get(1).and_then(Sexp::as_list).unwrap_or(&[]);
                    let grabbed = pair.first().and_then(Sexp::as_str).unwrap_or("");
                    let value = pair.get(1).and_then(Sexp::as_str).unwrap_or("").to_string();
                    output.push_str(grabbed);
                    return Ok(EvalResult { output, value });
                }
                if let Some(condition) = condition {
                    return Err(SwankError::LispError { condition, output });
                }
                let reason = result
                    .get(1)
                    .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string))
                    .unwrap_or_default();
                return Err(SwankError::Aborted { reason, output });
            } else if head.is_keyword("write-string") {
                if let Some(text) = items.get(1).and_then(Sexp::as_str) {
                    output.push_str(text);
                }
            } else if head.is_keyword("ping") {
                let (thread, tag) = (items.get(1), items.get(2));
                if let (Some(thread), Some(tag)) = (thread, tag) {
                    self.send(&format!("(:emacs-pong {thread} {tag})")).await?;
                }
            } else if head.is_keyword("debug") {
                // (:debug THREAD LEVEL (CONDITION TYPE EXTRAS) RESTARTS FRAMES CONTS)
                let description = items.get(3).and_then(Sexp::as_list).unwrap_or(&[]);
                let text = description
                    .first()
                    .and_then(Sexp::as_str)
                    .unwrap_or("unknown error");
                let kind = description.get(1).and_then(Sexp::as_str).unwrap_or("");
                condition.get_or_insert_with(|| {
                    let kind = kind.trim();
                    if kind.is_empty() {
                        text.to_string()
                    } else {
                        format!("{text} {kind}")
                    }
                });
                if let Some(thread) = items.get(1) {
                    let abort_id = self.take_id();
                    self.send(&format!(
                        "(:emacs-rex (swank:sldb-abort) {} {thread} {abort_id})",
                        Sexp::string_literal(package)
                    ))
                    .await?;
                }
            } else if head.is_keyword("reader-error") || head.is_keyword("invalid-rpc") {
                return Err(SwankError::Rejected(message.to_string()));
            }
            // :debug-activate, :debug-return, :new-features, :indentation-update, ...: ignored.
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn send(&mut self, payload: &str) -> Result<(), SwankError> {
        let bytes = payload.as_bytes();
        if bytes.len() > MAX_MESSAGE {
            return Err(SwankError::Protocol(format!(
                "request of {} bytes is too large",
                bytes.len()
            )));
        }
        let mut frame = format!("{:06x}", bytes.len()).into_bytes();
        frame.extend_from_slice(bytes);
        let stream = self.stream.get_mut();
        stream.write_all(&frame).await?;
        stream.flush().await?;
        Ok(())
    }

    async fn receive(&mut self) -> Result<Sexp, SwankError> {
        let mut payload = Vec::new();
        read_frame(&mut self.stream, &mut payload, MAX_MESSAGE).await?;
        Ok(sexp::parse(&String::from_utf8_lossy(&payload))?)
    }

    /// Reload `system` in place with the default form (see the module docs).
    pub async fn reload_system(&mut self, system: &str) -> Result<ReloadReport, SwankError> {
        swank_eval_script(self, &reload_form(system)).await
    }

    /// SBCL memory, GC and thread figures.
    pub async fn metrics(&mut self) -> Result<LispMetrics, SwankError> {
        let result = self.eval(METRICS_FORM, DEFAULT_PACKAGE).await?;
        parse_metrics(&result.value)
    }
}

/// Reads one message (header and payload) into `payload`, refusing one longer than `max`
/// before reading it. The buffer grows by at most [`CHUNK`] per read, so it never holds
/// much more than what the peer really sent.
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
    max: usize,
) -> Result<(), SwankError> {
    let eof = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SwankError::Closed
        } else {
            SwankError::Io(e)
        }
    };
    let mut header = [0u8; 6];
    reader.read_exact(&mut header).await.map_err(eof)?;
    let length = parse_header(&header)?;
    if length > max {
        return Err(SwankError::Protocol(format!(
            "a message of {length} bytes announced, more than the {max} accepted"
        )));
    }
    payload.clear();
    while payload.len() < length {
        let start = payload.len();
        let want = (length - start).min(CHUNK);
        payload.resize(start + want, 0);
        let got = reader.read(&mut payload[start..]).await?;
        payload.truncate(start + got);
        if got == 0 {
            return Err(SwankError::Closed);
        }
    }
    Ok(())
}

/// The six hex digit length header.
fn parse_header(header: &[u8; 6]) -> Result<usize, SwankError> {
    let text = std::str::from_utf8(header)
        .ok()
        .filter(|t| t.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            SwankError::Protocol(format!(
                "bad length header {:?}",
                String::from_utf8_lossy(header)
            ))
        })?;
    usize::from_str_radix(text, 16)
        .map_err(|e| SwankError::Protocol(format!("bad length header {text:?}: {e}")))
}

/// The default `reload_eval` for `system`: delete same-second fasls, then load incrementally.
pub fn reload_form(system: &str) -> String {
    let system = Sexp::string_literal(system);
    format!(
        "(let ((system (asdf:find-system {system})))
  (dolist (component (asdf:required-components system :other-systems nil
                                                       :component-type 'asdf:cl-source-file))
    (let ((source (asdf:component-pathname component))
          (fasl (first (asdf:output-files 'asdf:compile-op component))))
      (when (and fasl (probe-file fasl) (probe-file source)
                 (>= (file-write-date source) (file-write-date fasl)))
        (delete-file fasl))))
  (asdf:load-system system))"
    )
}

/// Wrap `form` so that its warnings, error and compiler diagnostics come back as the
/// value: `(:ok BOOL :error STRING-OR-NIL :warnings (STRING...) :diagnostics STRING)`.
/// `form` is read inside the wrapper, so a malformed form is reported, not injected.
pub fn wrap_reload_form(form: &str) -> String {
    let source = Sexp::string_literal(&format!("(progn {form}\n)"));
    format!(
        "(let ((windlass-diagnostics (make-string-output-stream))
      (windlass-warnings '())
      (windlass-error nil))
  (let ((*error-output* (make-broadcast-stream windlass-diagnostics *error-output*)))
    (handler-bind ((warning (lambda (c)
                              (push (format nil \"~a: ~a\" (type-of c) c) windlass-warnings))))
      (handler-case (eval (read-from-string {source}))
        (error (e)
          (setf windlass-error (format nil \"~a: ~a\" (type-of e) e))))))
  (list :ok (if windlass-error nil t)
        :error windlass-error
        :warnings (reverse windlass-warnings)
        :diagnostics (get-output-stream-string windlass-diagnostics)))"
    )
}

/// The in-image reloader: evaluate `reload_eval` wrapped by [`wrap_reload_form`] and
/// report what happened. Uses the client's deadline (raise it for big systems).
pub async fn swank_eval_script(
    client: &mut SwankClient,
    reload_eval: &str,
) -> Result<ReloadReport, SwankError> {
    let result = client
        .eval(&wrap_reload_form(reload_eval), DEFAULT_PACKAGE)
        .await?;
    let value = sexp::parse(&result.value)?;
    let ok = value
        .plist_get("ok")
        .ok_or_else(|| SwankError::Protocol(format!("reload returned {}", result.value)))?;
    let error = value
        .plist_get("error")
        .and_then(Sexp::as_str)
        .map(str::to_string);
    let warnings = value
        .plist_get("warnings")
        .and_then(Sexp::as_list)
        .unwrap_or(&[])
        .iter()
        .filter_map(Sexp::as_str)
        .map(str::to_string)
        .collect();
    let diagnostics = value
        .plist_get("diagnostics")
        .and_then(Sexp::as_str)
        .unwrap_or("")
        .to_string();
    Ok(ReloadReport {
        ok: !ok.is_nil() && error.is_none(),
        error,
        warnings,
        diagnostics,
        output: result.output,
    })
}

/// Returns a plist of SBCL figures.
pub const METRICS_FORM: &str = "(list :dynamic-usage (sb-kernel:dynamic-usage)
      :dynamic-space-size (sb-ext:dynamic-space-size)
      :gc-run-time sb-ext:*gc-run-time*
      :time-units internal-time-units-per-second
      :bytes-consed (sb-ext:get-bytes-consed)
      :threads (length (sb-thread:list-all-threads)))";

fn parse_metrics(value: &str) -> Result<LispMetrics, SwankError> {
    let plist = sexp::parse(value)?;
    let get = |key: &str| {
        plist.plist_get(key).and_then(Sexp::as_u64).ok_or_else(|| {
            SwankError::Protocol(format!("metrics without a number for :{key}: {value}"))
        })
    };
    let units = get("time-units")?.max(1);
    Ok(LispMetrics {
        dynamic_usage_bytes: get("dynamic-usage")?,
        dynamic_space_size_bytes: get("dynamic-space-size")?,
        gc_run_time_seconds: get("gc-run-time")? as f64 / units as f64,
        bytes_consed_total: get("bytes-consed")?,
        threads: get("threads")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::Rng;
    use tokio::net::TcpListener;

    #[test]
    fn headers() {
        assert_eq!(parse_header(b"00001a").expect("hex"), 26);
        assert!(parse_header(b"00001g").is_err());
        assert!(parse_header(b"+00001").is_err());
        assert!(parse_header(&[0xff; 6]).is_err());
    }

    #[test]
    fn metrics_parse() {
        let m = parse_metrics("(:DYNAMIC-USAGE 100 :DYNAMIC-SPACE-SIZE 8589934592 :GC-RUN-TIME 500000 :TIME-UNITS 1000000 :BYTES-CONSED 123456789012345 :THREADS 7)")
            .expect("parses");
        assert_eq!(m.dynamic_usage_bytes, 100);
        assert_eq!(m.gc_run_time_seconds, 0.5);
        assert_eq!(m.threads, 7);
        assert!(parse_metrics("(:threads x)").is_err());
        assert!(parse_metrics("garbage(").is_err());
    }

    #[test]
    fn the_wrapped_reload_form_is_one_readable_form() {
        let wrapped = wrap_reload_form(&reload_form("hello-lisp"));
        assert!(sexp::parse(&wrapped).is_ok());
        // A form with unbalanced parens stays inside the string literal.
        assert!(sexp::parse(&wrap_reload_form("(foo))) (bar")).is_ok());
    }

    /// A scripted fake server speaking the framing: it checks the client's handling of
    /// interleaved messages. Real swank is exercised by the integration tests.
    async fn scripted(
        replies: Vec<&'static str>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut received = Vec::new();
            let mut header = [0u8; 6];
            socket.read_exact(&mut header).await.expect("header");
            let mut body = vec![0; parse_header(&header).expect("len")];
            socket.read_exact(&mut body).await.expect("body");
            received.push(String::from_utf8(body).expect("utf8"));
            for reply in replies {
                if reply == "<read>" {
                    socket.read_exact(&mut header).await.expect("header");
                    let mut body = vec![0; parse_header(&header).expect("len")];
                    socket.read_exact(&mut body).await.expect("body");
                    received.push(String::from_utf8(body).expect("utf8"));
                } else {
                    let frame = format!("{:06x}{reply}", reply.len());
                    socket.write_all(frame.as_bytes()).await.expect("write");
                }
            }
            received
        });
        (addr, task)
    }

    #[tokio::test]
    async fn eval_collects_output_and_answers_pings() {
        let (addr, server) = scripted(vec![
            "(:new-features (:x))",
            "(:write-string \"hi \")",
            "(:ping 5 9)",
            "<read>",
            "(:return (:ok (\"there\" \"42\")) 1)",
        ])
        .await;
        let mut client = SwankClient::connect(addr).await.expect("connect");
        let result = client
            .eval("(+ 40 2)", DEFAULT_PACKAGE)
            .await
            .expect("evaluates");
        assert_eq!(
            result,
            EvalResult {
                output: "hi there".into(),
                value: "42".into()
            }
        );
        let received = server.await.expect("server");
        assert_eq!(
            received[0],
            "(:emacs-rex (swank:eval-and-grab-output \"(+ 40 2)\") \"COMMON-LISP-USER\" t 1)"
        );
        assert_eq!(received[1], "(:emacs-pong 5 9)");
    }

    #[tokio::test]
    async fn debug_is_aborted_and_reported() {
        let (addr, server) = scripted(vec![
            "(:debug 3 1 (\"boom\" \"   [Condition of type SIMPLE-ERROR]\" nil) ((\"ABORT\" \"x\")) () (nil))",
            "<read>",
            "(:return (:abort \"#<SIMPLE-ERROR>\") 1)",
        ])
        .await;
        let mut client = SwankClient::connect(addr).await.expect("connect");
        let error = client
            .eval("(error \"boom\")", DEFAULT_PACKAGE)
            .await
            .expect_err("fails");
        assert!(
            matches!(&error, SwankError::LispError { condition, .. } if condition.starts_with("boom")),
            "{error}"
        );
        let received = server.await.expect("server");
        assert_eq!(
            received[1],
            "(:emacs-rex (swank:sldb-abort) \"COMMON-LISP-USER\" 3 2)"
        );
    }

    #[tokio::test]
    async fn garbage_and_silence_are_errors() {
        for reply in ["zzzzzz", "000003(((", "000002()"] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.expect("accept");
                socket.write_all(reply.as_bytes()).await.expect("write");
                socket
            });
            let mut client = SwankClient::connect(addr).await.expect("connect");
            client.set_timeout(Duration::from_secs(5));
            let error = client.eval("1", DEFAULT_PACKAGE).await.expect_err("fails");
            assert!(
                matches!(error, SwankError::Protocol(_) | SwankError::Syntax(_)),
                "{reply}: {error}"
            );
            drop(server.await.expect("server"));
        }
        let (addr, _server) = scripted(vec![]).await;
        let mut client = SwankClient::connect(addr).await.expect("connect");
        client.set_timeout(Duration::from_millis(200));
        let error = client.eval("1", DEFAULT_PACKAGE).await.expect_err("fails");
        assert!(
            matches!(error, SwankError::Timeout(_) | SwankError::Closed),
            "{error}"
        );
    }

    /// Hands out `data` a random few bytes per read, as a TCP peer might.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        rng: Rng,
    }

    impl tokio::io::AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            let left = this.data.len() - this.pos;
            let n = (1 + this.rng.below(700)).min(left).min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Property: any run of frames, cut into random chunks, reads back as the same
    /// payloads; garbage and truncation are errors, never a panic or a hang.
    #[tokio::test]
    async fn framing_reads_back_what_was_framed_in_any_chunking() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            let mut payloads = Vec::new();
            let mut data = Vec::new();
            for _ in 0..rng.below(8) {
                let p: Vec<u8> = (0..rng.below(3000))
                    .map(|_| (rng.next() & 0xff) as u8)
                    .collect();
                data.extend_from_slice(format!("{:06x}", p.len()).as_bytes());
                data.extend_from_slice(&p);
                payloads.push(p);
            }
            // Every third round: break the stream somewhere.
            let broken = round % 3 == 0 && !data.is_empty();
            if broken {
                match rng.below(3) {
                    0 => data.truncate(rng.below(data.len())),
                    1 => {
                        let at = rng.below(data.len());
                        data[at] = (rng.next() & 0xff) as u8;
                    }
                    _ => {
                        data.splice(0..0, *b"zz");
                    }
                }
            }
            let mut reader = Chunked {
                data,
                pos: 0,
                rng: Rng(rng.next() | 1),
            };
            let mut got = Vec::new();
            let mut buf = Vec::new();
            let end = loop {
                match read_frame(&mut reader, &mut buf, MAX_MESSAGE).await {
                    Ok(()) => got.push(buf.clone()),
                    Err(e) => break e,
                }
                assert!(got.len() <= 16, "more frames than were sent");
            };
            if !broken {
                assert_eq!(got, payloads);
                assert!(matches!(end, SwankError::Closed), "{end}");
            } else {
                assert!(
                    matches!(end, SwankError::Closed | SwankError::Protocol(_)),
                    "{end}"
                );
            }
        }
    }

    /// A peer that announces the largest message and sends a few bytes costs a few bytes
    /// (not 16 MiB up front); one past the accepted size is refused before any allocation.
    #[tokio::test]
    async fn the_announced_length_is_not_trusted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            socket.write_all(b"ffffff(:return").await.expect("write");
            // Then silence, then close.
            socket
        });
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let socket = server.await.expect("server");
        let mut buf = Vec::new();
        let reading = read_frame(&mut stream, &mut buf, MAX_MESSAGE);
        let timed_out = tokio::time::timeout(Duration::from_millis(100), reading).await;
        assert!(timed_out.is_err(), "waits for the rest");
        drop(socket);
        let e = read_frame(&mut stream, &mut buf, MAX_MESSAGE)
            .await
            .expect_err("closed");
        assert!(matches!(e, SwankError::Closed), "{e}");
        assert!(
            buf.capacity() <= 2 * CHUNK,
            "{} bytes allocated for a 14-byte message",
            buf.capacity()
        );

        // Past the limit: refused from the header.
        let mut over: &[u8] = b"000401xxxx";
        let mut buf = Vec::new();
        let e = read_frame(&mut over, &mut buf, 1024)
            .await
            .expect_err("too large");
        assert!(
            matches!(&e, SwankError::Protocol(m) if m.contains("1025 bytes")),
            "{e}"
        );
        assert_eq!(buf.capacity(), 0);
    }

    /// A reply with too many nodes or too deep a nesting is an error for the caller.
    #[tokio::test]
    async fn hostile_replies_are_refused() {
        let wide: &'static str =
            Box::leak(format!("({})", "() ".repeat(sexp::MAX_NODES)).into_boxed_str());
        let deep: &'static str =
            Box::leak(format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)).into_boxed_str());
        for reply in [wide, deep] {
            let (addr, _server) = scripted(vec![reply]).await;
            let mut client = SwankClient::connect(addr).await.expect("connect");
            client.set_timeout(Duration::from_secs(10));
            let e = client
                .eval("1", DEFAULT_PACKAGE)
                .await
                .expect_err("refused");
            assert!(
                matches!(
                    e,
                    SwankError::Syntax(SexpError::TooLarge(_) | SexpError::TooDeep(_))
                ),
                "{e}"
            );
        }
    }
}

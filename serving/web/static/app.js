/* Earworm — the page to hum into.
 *
 * Plain JavaScript, no build step, no dependencies. Everything lives in this one closure; the only
 * global it leaves is `window.Earworm`, a small frozen object for tests and debugging.
 *
 * Sections: settings and state · small helpers · messages · server info and token · recording ·
 * live mode · upload · the identify request · rendering the results · the "why it matched" plot ·
 * playback · start.
 */
(function () {
  "use strict";

  // ---- settings and state -------------------------------------------------------------------

  const SETTINGS = Object.freeze({
    recordLimitSeconds: 15,
    topK: 5,
    requestTimeoutMs: 90000,
    tokenKey: "earworm.token",
    transposeRange: 24,
    maxJoinSemitones: 7,
    preferredMimeType: "audio/webm;codecs=opus",
    // A tune, not a call: the browser's voice-call processing (noise suppression, echo cancellation,
    // automatic gain) smears held notes and gates quiet hums, so it is asked to stay off.
    microphone: Object.freeze({ echoCancellation: false, noiseSuppression: false, autoGainControl: false,
                                channelCount: 1 }),
    liveKey: "earworm.live",
    liveIntervalSeconds: 1.0,   // seconds of humming between the server's interim guesses
    liveChunkSeconds: 0.1,      // PCM is sent in pieces this long
  });

  /** gRPC status names (live mode's errors) as the HTTP statuses the page already explains. */
  const STATUS_FOR_CODE = Object.freeze({
    INVALID_ARGUMENT: 400, UNAUTHENTICATED: 401, NOT_FOUND: 404, RESOURCE_EXHAUSTED: 429, CANCELLED: 499,
    UNAVAILABLE: 503, DEADLINE_EXCEEDED: 504,
  });

  const NOTE_NAMES = ["C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B"];

  const state = {
    info: {
      model_version: "",
      index_version: "",
      tracks: null,
      token_required: false,
      min_query_seconds: 2.0,
      max_query_seconds: 30.0,
      master_audio: false,
    },
    infoLoaded: false,
    recording: null,   // the recording in progress: {stream, recorder, chunks, startedAt, ...}
    request: null,     // the identify request in flight: {controller, seq}
    live: null,        // the live-mode stream in progress (see startLive)
    liveLog: [],       // what the last live stream answered: "interim", then "final" or "early"
    requestSeq: 0,
    answer: null,      // the rendered answer: {kind, matches, queryPitch, ...}
    selected: -1,      // index of the match the plot explains
    plot: null,        // what the plot draws (built by buildPlot)
    playing: null,     // the match whose master the player holds
    pendingSeek: null, // the loadedmetadata handler waiting to seek
    objectUrl: null,   // blob URL of a master fetched with the token
    playheadFrame: 0,
    redrawFrame: 0,
  };

  const el = {};

  // ---- small helpers ----------------------------------------------------------------------------

  function byId(id) {
    return document.getElementById(id);
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function toNumber(value, fallback) {
    const n = typeof value === "number" ? value : parseFloat(value);
    return Number.isFinite(n) ? n : (fallback === undefined ? 0 : fallback);
  }

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  /** A field of a protobuf JSON object by its proto name, or its lowerCamelCase JSON name. */
  function field(obj, name) {
    if (!obj || typeof obj !== "object") return undefined;
    if (name in obj) return obj[name];
    const camel = name.replace(/_([a-z])/g, function (_, c) { return c.toUpperCase(); });
    return obj[camel];
  }

  /** 2 -> "2", 2.5 -> "2.5" */
  function formatNumber(value) {
    return String(Math.round(value * 10) / 10);
  }

  /** Seconds as the timer shows them: "3.2 s". */
  function formatSeconds(seconds) {
    return Math.max(0, seconds).toFixed(1) + " s";
  }

  /** Seconds as a clock: 72.4 -> "1:12". */
  function formatClock(seconds) {
    const whole = Math.max(0, Math.floor(seconds));
    const minutes = Math.floor(whole / 60);
    const rest = whole % 60;
    return minutes + ":" + (rest < 10 ? "0" : "") + rest;
  }

  function formatScore(score) {
    return toNumber(score).toFixed(2);
  }

  function plural(n, one, many) {
    return n + " " + (n === 1 ? one : many);
  }

  /** MIDI note number -> name: 60 -> "C4". */
  function noteName(midi) {
    const n = Math.round(midi);
    return NOTE_NAMES[((n % 12) + 12) % 12] + (Math.floor(n / 12) - 1);
  }

  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  // ---- messages -----------------------------------------------------------------------------------

  /**
   * The headline. kind: "match" | "no-match" | "no-melody" | "error" | "pending" | null (nothing yet).
   * content: a string or a DOM node.
   */
  function setVerdict(kind, content) {
    if (kind) el.verdict.dataset.verdict = kind;
    else delete el.verdict.dataset.verdict;
    el.verdict.replaceChildren(typeof content === "string" ? document.createTextNode(content) : content);
  }

  /** The status line (a polite live region). parts: strings and nodes. */
  function setStatus(parts, options) {
    const busy = Boolean(options && options.busy);
    const list = Array.isArray(parts) ? parts : [parts];
    el.status.replaceChildren.apply(el.status, list.map(function (part) {
      return typeof part === "string" ? document.createTextNode(part) : part;
    }));
    el.status.classList.toggle("is-busy", busy);
    el.results.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function clearAnswer() {
    stopPlayback();
    delete el.verdict.dataset.interim;
    el.results.classList.remove("is-interim");
    delete document.body.dataset.live;
    state.answer = null;
    state.selected = -1;
    el.results.replaceChildren();
    el.results.classList.remove("is-unsure");
    el.answerTime.textContent = "";
    delete document.body.dataset.answerMs;
    setPlot(null);
  }

  /** Every failure ends here: a short headline, the full sentence in the status line. */
  function showError(title, message) {
    clearAnswer();
    setVerdict("error", title);
    setStatus(message);
  }

  // ---- server info and token ------------------------------------------------------------------

  async function loadInfo() {
    try {
      const response = await fetch("/v1/info", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("HTTP " + response.status);
      applyInfo(await response.json());
    } catch (err) {
      el.serverInfo.textContent = "Server details are not available right now.";
    } finally {
      el.record.disabled = false;
    }
  }

  function applyInfo(info) {
    if (!info || typeof info !== "object") return;
    const s = state.info;
    s.model_version = String(field(info, "model_version") || "");
    s.index_version = String(field(info, "index_version") || "");
    s.tracks = Number.isFinite(toNumber(field(info, "tracks"), NaN)) ? toNumber(field(info, "tracks")) : null;
    s.token_required = Boolean(field(info, "token_required"));
    s.min_query_seconds = toNumber(field(info, "min_query_seconds"), 2.0);
    s.max_query_seconds = toNumber(field(info, "max_query_seconds"), 30.0);
    s.master_audio = Boolean(field(info, "master_audio"));
    state.infoLoaded = true;
    el.timerMax.textContent = formatNumber(recordLimit());
    if (s.token_required) showTokenField(false);
    renderServerInfo();
  }

  function renderServerInfo() {
    const s = state.info;
    const parts = [];
    if (s.model_version) parts.push("Model " + s.model_version);
    if (s.index_version) parts.push("Index " + s.index_version);
    if (s.tracks !== null) parts.push(s.tracks.toLocaleString("en") + (s.tracks === 1 ? " track" : " tracks"));
    el.serverInfo.textContent = parts.length ? "Earworm · " + parts.join(" · ") : "Earworm";
  }

  function recordLimit() {
    return Math.min(SETTINGS.recordLimitSeconds, state.info.max_query_seconds || SETTINGS.recordLimitSeconds);
  }

  function initToken() {
    try {
      el.token.value = sessionStorage.getItem(SETTINGS.tokenKey) || "";
    } catch (err) { /* storage may be off: the field still works for this page */ }
    el.tokenField.addEventListener("submit", function (event) {
      event.preventDefault();  // Enter in the field just keeps the token
    });
    el.token.addEventListener("input", function () {
      el.tokenField.classList.remove("needs-attention");
      try {
        sessionStorage.setItem(SETTINGS.tokenKey, el.token.value.trim());
      } catch (err) { /* see above */ }
    });
  }

  function showTokenField(focus) {
    el.tokenField.hidden = false;
    if (focus) {
      el.tokenField.classList.add("needs-attention");
      el.token.focus();
    }
  }

  function token() {
    return el.tokenField.hidden ? "" : el.token.value.trim();
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  // ---- recording ----------------------------------------------------------------------------------

  function toggleRecording() {
    if (state.starting) return;  // the microphone prompt is still open
    if (state.recording) stopRecording("button");
    else startRecording();
  }

  async function startRecording() {
    cancelRequest();
    if (!navigator.mediaDevices || typeof navigator.mediaDevices.getUserMedia !== "function") {
      showError("Recording is not available here", window.isSecureContext === false
        ? "This page can only use the microphone over https (or on localhost). Upload a recording instead."
        : "This browser cannot record audio. Upload a recording instead.");
      return;
    }
    if (typeof window.MediaRecorder !== "function") {
      showError("Recording is not available here", "This browser cannot record audio. Upload a recording instead.");
      return;
    }
    clearAnswer();
    setVerdict("pending", "Listening…");
    setStatus("Asking for the microphone…");
    // Not `disabled` while the browser asks: a disabled button drops the keyboard focus.
    state.starting = true;
    el.record.setAttribute("aria-busy", "true");
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: SETTINGS.microphone });
    } catch (err) {
      showMicrophoneError(err);
      return;
    } finally {
      state.starting = false;
      el.record.removeAttribute("aria-busy");
    }
    beginRecording(stream);
  }

  function pickMimeType() {
    const wanted = SETTINGS.preferredMimeType;
    return typeof MediaRecorder.isTypeSupported === "function" && MediaRecorder.isTypeSupported(wanted) ? wanted : "";
  }

  function beginRecording(stream) {
    let recorder;
    try {
      const mimeType = pickMimeType();
      recorder = mimeType ? new MediaRecorder(stream, { mimeType: mimeType }) : new MediaRecorder(stream);
    } catch (err) {
      stopStream(stream);
      showError("Recording failed", "This browser could not start recording (" + err.message + "). Upload a recording instead.");
      return;
    }
    const rec = {
      stream: stream, recorder: recorder, chunks: [], startedAt: 0, stoppedAt: 0,
      meter: startLevelMeter(stream), frame: 0, autoStop: 0, stopping: false, discarded: false, failed: null,
    };
    recorder.addEventListener("dataavailable", function (event) {
      if (event.data && event.data.size > 0) rec.chunks.push(event.data);
    });
    recorder.addEventListener("error", function (event) {
      rec.failed = (event && event.error) || new Error("the recorder stopped");
    });
    recorder.addEventListener("stop", function () { finishRecording(rec); });
    stream.getAudioTracks().forEach(function (track) {
      track.addEventListener("ended", function () { if (state.recording === rec) stopRecording("ended"); });
    });

    state.recording = rec;
    recorder.start();
    rec.startedAt = performance.now();
    if (el.live && el.live.checked) rec.live = startLive(stream, rec);
    rec.autoStop = window.setTimeout(function () { stopRecording("limit"); }, recordLimit() * 1000);
    setRecordButton(true);
    el.timer.textContent = formatSeconds(0);
    setStatus("Recording — hum the tune, then press Stop (it stops by itself at " + formatNumber(recordLimit()) + " s).");
    rec.frame = requestAnimationFrame(function () { tickRecording(rec); });
  }

  /** Every frame while recording: the timer, the level meter, the time limit. */
  function tickRecording(rec) {
    if (state.recording !== rec || rec.stopping) return;
    const elapsed = (performance.now() - rec.startedAt) / 1000;
    el.timer.textContent = formatSeconds(elapsed);
    showLevel(readLevel(rec.meter));
    if (elapsed >= recordLimit()) {
      stopRecording("limit");
      return;
    }
    rec.frame = requestAnimationFrame(function () { tickRecording(rec); });
  }

  function stopRecording(reason) {
    const rec = state.recording;
    if (!rec || rec.stopping) return;
    rec.stopping = true;
    rec.stoppedAt = performance.now();  // the answer time runs from here
    rec.reason = reason;
    window.clearTimeout(rec.autoStop);
    cancelAnimationFrame(rec.frame);
    el.timer.textContent = formatSeconds((rec.stoppedAt - rec.startedAt) / 1000);
    setRecordButton(false);
    showLevel(0);
    if (rec.recorder.state !== "inactive") {
      try {
        rec.recorder.stop();
        return;  // finishRecording runs on the recorder's "stop" event
      } catch (err) {
        rec.failed = err;
      }
    }
    finishRecording(rec);
  }

  /** A recording in progress is dropped (a file was chosen instead). */
  function discardRecording() {
    const rec = state.recording;
    if (!rec) return;
    rec.discarded = true;
    stopRecording("discarded");
  }

  function finishRecording(rec) {
    if (rec.finished) return;
    rec.finished = true;
    stopStream(rec.stream);
    stopLevelMeter(rec.meter);
    if (state.recording === rec) state.recording = null;
    const live = rec.live;
    if (rec.discarded) {
      if (live) closeLive(live);
      return;
    }
    if (live && (live.phase === "final" || live.phase === "error")) return;  // answered, or explained, live
    if (live && (rec.failed || (rec.stoppedAt - rec.startedAt) / 1000 < state.info.min_query_seconds)) closeLive(live);

    const seconds = (rec.stoppedAt - rec.startedAt) / 1000;
    const minimum = state.info.min_query_seconds;
    if (rec.failed) {
      showError("Recording failed", "The recording stopped with an error (" + (rec.failed.message || rec.failed.name ||
        "unknown") + "). Try again, or upload a recording instead.");
      return;
    }
    if (seconds < minimum) {
      showError("Too short", "That was only " + seconds.toFixed(1) + " s — hum for at least " + formatNumber(minimum) +
        " seconds (10 is best).");
      return;
    }
    const type = rec.recorder.mimeType || (rec.chunks[0] && rec.chunks[0].type) || "audio/webm";
    const blob = new Blob(rec.chunks, { type: type });
    if (blob.size === 0) {
      if (live) closeLive(live);
      showError("Nothing was recorded", "The microphone gave no sound. Check that it is connected and not muted, or upload a recording instead.");
      return;
    }
    const what = "your " + seconds.toFixed(1) + " s recording";
    if (live && live.phase !== "broken") {
      endLive(live, blob, what);  // the final answer comes over the stream; the blob is the fallback
      return;
    }
    identify(blob, { startedAt: rec.stoppedAt, what: what });
  }

  function stopStream(stream) {
    if (!stream) return;
    stream.getTracks().forEach(function (track) { track.stop(); });
  }

  function showMicrophoneError(err) {
    const name = (err && err.name) || "";
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      showError("Microphone blocked",
        "Microphone access was denied. Allow it in the browser's site settings, or upload a recording instead.");
    } else if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
      showError("No microphone found",
        "No microphone was found. Connect one and try again, or upload a recording instead.");
    } else if (name === "NotReadableError" || name === "AbortError" || name === "TrackStartError") {
      showError("The microphone is busy",
        "The microphone could not be started — another app may be using it. Close it and try again, or upload a recording instead.");
    } else {
      showError("The microphone could not be used",
        "The microphone could not be used (" + ((err && err.message) || name || "unknown error") +
        "). Try again, or upload a recording instead.");
    }
  }

  function setRecordButton(recording) {
    el.record.classList.toggle("is-recording", recording);
    el.recordLabel.textContent = recording ? "Stop" : "Record";
  }

  // The level meter: an AnalyserNode on the microphone, RMS in dB mapped onto 0..1.

  function startLevelMeter(stream) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context) return null;
    try {
      const context = new Context();
      const analyser = context.createAnalyser();
      analyser.fftSize = 1024;
      context.createMediaStreamSource(stream).connect(analyser);
      if (context.state === "suspended") context.resume().catch(function () {});
      return { context: context, analyser: analyser, data: new Float32Array(analyser.fftSize), level: 0, peak: 0 };
    } catch (err) {
      return null;  // no meter, the recording still works
    }
  }

  function readLevel(meter) {
    if (!meter) return 0;
    meter.analyser.getFloatTimeDomainData(meter.data);
    let sum = 0;
    for (let i = 0; i < meter.data.length; i += 1) sum += meter.data[i] * meter.data[i];
    const rms = Math.sqrt(sum / meter.data.length);
    const target = clamp((20 * Math.log10(rms + 1e-9) + 60) / 60, 0, 1);  // -60 dBFS .. 0 dBFS
    meter.level = target > meter.level ? target : meter.level * 0.85 + target * 0.15;  // quick up, slow down
    meter.peak = Math.max(meter.peak, meter.level);
    return meter.level;
  }

  function showLevel(level) {
    el.level.value = level;
    el.level.textContent = Math.round(level * 100) + "%";
    if (level > 0) {
      el.level.dataset.peak = String(Math.max(toNumber(el.level.dataset.peak), Math.round(level * 100) / 100));
    }
  }

  function stopLevelMeter(meter) {
    if (meter && meter.context && meter.context.state !== "closed") meter.context.close().catch(function () {});
  }

  // ---- live mode ------------------------------------------------------------------------------------
  // Beside the recorder, the microphone's samples go to WS /v1/stream as 16-bit PCM while the person
  // hums; the server answers with interim guesses and one final answer (after Stop, or earlier once it
  // is sure). If the stream breaks, the whole recording is sent to /v1/identify when it stops.

  function liveUrl() {
    return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + "/v1/stream";
  }

  function startLive(stream, rec) {
    const live = {
      rec: rec, socket: null, context: null, rate: 0, queue: [], queued: 0, sentSamples: 0,
      phase: "connecting", ended: false, closed: false, blob: null, what: "", timer: 0, answers: 0,
    };
    state.live = live;
    state.liveLog = [];
    openLiveAudio(live, stream).catch(function (err) {
      liveBroken(live, "the browser could not capture raw audio: " + ((err && err.message) || err));
    });
    return live;
  }

  async function openLiveAudio(live, stream) {
    const Context = window.AudioContext || window.webkitAudioContext;
    if (!Context || typeof window.WebSocket !== "function") throw new Error("no Web Audio or WebSocket here");
    let context = null;
    let source;
    try {  // 16 kHz, the rate the server works at: the browser resamples the microphone
      context = new Context({ sampleRate: 16000 });
      source = context.createMediaStreamSource(stream);
    } catch (err) {  // some browsers refuse a microphone into a context at another rate
      if (context) context.close().catch(function () {});
      context = new Context();
      source = context.createMediaStreamSource(stream);
    }
    live.context = context;
    if (live.closed) return closeLive(live);
    const sink = context.createGain();  // keeps the graph pulling; nothing is heard
    sink.gain.value = 0;
    sink.connect(context.destination);
    let node;
    if (context.audioWorklet && typeof window.AudioWorkletNode === "function") {
      await context.audioWorklet.addModule("/static/pcm-worklet.js");
      if (live.closed) return closeLive(live);
      node = new AudioWorkletNode(context, "earworm-pcm-tap");
      node.port.onmessage = function (event) { liveSamples(live, event.data); };
    } else {
      node = context.createScriptProcessor(4096, 1, 1);
      node.onaudioprocess = function (event) {
        liveSamples(live, new Float32Array(event.inputBuffer.getChannelData(0)));
      };
    }
    source.connect(node);
    node.connect(sink);
    if (context.state === "suspended") await context.resume();
    live.rate = context.sampleRate;
    openLiveSocket(live);
  }

  function openLiveSocket(live) {
    const socket = new WebSocket(liveUrl());
    socket.binaryType = "arraybuffer";
    live.socket = socket;
    socket.addEventListener("open", function () {
      if (live.closed) return;
      socket.send(JSON.stringify({
        sample_rate_hz: live.rate, encoding: "s16le", channels: 1, top_k: SETTINGS.topK,
        interim_interval_seconds: SETTINGS.liveIntervalSeconds, include_pitch: true, token: token(),
      }));
      live.phase = "open";
      flushLive(live);
      if (live.ended) sendLiveEnd(live);
    });
    socket.addEventListener("message", function (event) { onLiveMessage(live, event.data); });
    socket.addEventListener("close", function () {
      if (!live.closed && live.phase !== "final" && live.phase !== "error") {
        liveBroken(live, "the connection closed before an answer");
      }
    });
  }

  function liveSamples(live, samples) {
    if (live.closed || live.ended) return;
    live.queue.push(samples);
    live.queued += samples.length;
    if (live.phase === "open" && live.queued >= live.rate * SETTINGS.liveChunkSeconds) flushLive(live);
  }

  /** What is queued, as little-endian 16-bit PCM, in one binary message. */
  function flushLive(live) {
    if (!live.queued || !live.socket || live.socket.readyState !== WebSocket.OPEN) return;
    const pcm = new Int16Array(live.queued);
    let at = 0;
    live.queue.forEach(function (block) {
      for (let i = 0; i < block.length; i += 1) pcm[at++] = Math.round(clamp(block[i], -1, 1) * 32767);
    });
    live.queue = [];
    live.queued = 0;
    live.socket.send(pcm.buffer);
    live.sentSamples += pcm.length;
  }

  /** The person pressed Stop: the rest of the audio, then {"end": true}; the final answer follows. */
  function endLive(live, blob, what) {
    live.ended = true;
    live.blob = blob;
    live.what = what;
    setVerdict("pending", "Listening to your tune…");
    el.results.classList.add("is-interim");
    setStatus("Identifying " + what + "…", { busy: true });
    live.timer = window.setTimeout(function () { liveBroken(live, "no answer in time"); }, SETTINGS.requestTimeoutMs);
    if (live.phase === "open") sendLiveEnd(live);
  }

  function sendLiveEnd(live) {
    flushLive(live);
    stopLiveAudio(live);
    try {
      live.socket.send(JSON.stringify({ end: true }));
    } catch (err) {
      liveBroken(live, "the connection failed");
    }
  }

  function onLiveMessage(live, data) {
    if (live.closed || typeof data !== "string") return;
    let message = null;
    try {
      message = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (message.error && typeof message.error === "object") {
      live.phase = "error";
      closeLive(live);
      stopLiveRecording(live);
      showHttpError(STATUS_FOR_CODE[String(message.error.code || "")] || 500, { error: message.error });
      return;
    }
    if (!message.result || typeof message.result !== "object") return;
    live.answers += 1;
    state.liveLog.push(message.is_final ? (live.ended ? "final" : "early") : "interim");
    const heard = (performance.now() - live.rec.startedAt) / 1000;
    if (message.is_final) {
      live.phase = "final";
      const early = !live.ended;  // the server was sure before Stop
      closeLive(live);
      if (early) stopLiveRecording(live);
      renderAnswer(message.result, early ? performance.now() : live.rec.stoppedAt,
                   { live: early ? "early" : "final", heard: heard });
    } else if (!live.ended) {
      renderAnswer(message.result, live.rec.startedAt, { interim: true, heard: heard });
    }
  }

  /** The stream failed: after Stop the recording goes as a whole; before it, it will when it stops. */
  function liveBroken(live, why) {
    if (live.closed || live.phase === "final" || live.phase === "error") return;
    live.phase = "broken";
    closeLive(live);
    if (live.ended && live.blob) {
      identify(live.blob, { startedAt: live.rec.stoppedAt, what: live.what });
    } else if (state.recording === live.rec) {
      setStatus("Live guesses stopped (" + why + "); the recording is sent as a whole when you press Stop.");
    }
  }

  function stopLiveRecording(live) {
    if (state.recording === live.rec && !live.rec.stopping) stopRecording("answered");
  }

  function stopLiveAudio(live) {
    if (live.context && live.context.state !== "closed") live.context.close().catch(function () {});
  }

  function closeLive(live) {
    live.closed = true;
    window.clearTimeout(live.timer);
    stopLiveAudio(live);
    if (live.socket && live.socket.readyState <= WebSocket.OPEN) {
      try {
        live.socket.close();
      } catch (err) { /* already closing */ }
    }
    if (state.live === live) state.live = null;
  }

  function initLiveToggle() {
    if (!el.live) return;
    try {
      el.live.checked = sessionStorage.getItem(SETTINGS.liveKey) === "1";
    } catch (err) { /* storage may be off */ }
    el.live.addEventListener("change", function () {
      try {
        sessionStorage.setItem(SETTINGS.liveKey, el.live.checked ? "1" : "0");
      } catch (err) { /* see above */ }
    });
  }

  // ---- upload ---------------------------------------------------------------------------------------

  function onFileChosen() {
    const file = el.file.files && el.file.files[0];
    if (!file) return;
    const startedAt = performance.now();
    el.file.value = "";  // choosing the same file again is a new request
    sendFile(file, startedAt);
  }

  function sendFile(file, startedAt) {
    discardRecording();
    if (file.size === 0) {
      showError("That file is empty", "“" + file.name + "” is empty. Choose a recording of a hum, whistle or song.");
      return;
    }
    identify(file, { startedAt: startedAt, what: "“" + file.name + "”" });
  }

  function initDropZone() {
    const zone = el.capture;
    const upload = el.upload;
    zone.addEventListener("dragover", function (event) {
      if (!event.dataTransfer || Array.prototype.indexOf.call(event.dataTransfer.types, "Files") < 0) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      upload.classList.add("is-dragover");
    });
    zone.addEventListener("dragleave", function (event) {
      if (!zone.contains(event.relatedTarget)) upload.classList.remove("is-dragover");
    });
    zone.addEventListener("drop", function (event) {
      upload.classList.remove("is-dragover");
      const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
      if (!file) return;
      event.preventDefault();
      sendFile(file, performance.now());
    });
  }

  // ---- the identify request ---------------------------------------------------------------------

  function cancelRequest() {
    if (state.live && !state.recording) closeLive(state.live);  // a live answer still awaited
    if (!state.request) return;
    state.request.cancelled = true;
    state.request.controller.abort();
    state.request = null;
  }

  /** POST the audio as is; render the answer, or say what went wrong. */
  async function identify(body, context) {
    cancelRequest();
    const request = { controller: new AbortController(), seq: ++state.requestSeq, cancelled: false, timedOut: false };
    state.request = request;
    const timer = window.setTimeout(function () {
      request.timedOut = true;
      request.controller.abort();
    }, SETTINGS.requestTimeoutMs);

    clearAnswer();
    setVerdict("pending", "Listening to your tune…");
    setStatus("Identifying " + context.what + "…", { busy: true });

    const url = "/v1/identify?top_k=" + SETTINGS.topK + "&include_pitch=true";
    const headers = Object.assign({ "Content-Type": body.type || "application/octet-stream" }, authHeaders());
    let response;
    let text;
    try {
      response = await fetch(url, { method: "POST", body: body, headers: headers, cache: "no-store",
                                    signal: request.controller.signal });
      text = await response.text();
    } catch (err) {
      window.clearTimeout(timer);
      if (request.cancelled || state.request !== request) return;  // replaced by a newer query
      state.request = null;
      if (request.timedOut) {
        showError("No answer in time", "The Earworm server did not answer within " +
          Math.round(SETTINGS.requestTimeoutMs / 1000) + " s. Try again in a moment.");
      } else {
        showError("Cannot reach the server",
          "Cannot reach the Earworm server. Check your connection (or whether the server is running) and try again.");
      }
      return;
    }
    window.clearTimeout(timer);
    if (request.cancelled || state.request !== request) return;
    state.request = null;

    let payload = null;
    try {
      payload = text ? JSON.parse(text) : null;
    } catch (err) {
      payload = null;
    }
    if (!response.ok) {
      showHttpError(response.status, payload);
      return;
    }
    if (!payload || typeof payload !== "object") {
      showError("An unreadable answer", "The server sent an answer this page could not read. Try again.");
      return;
    }
    renderAnswer(payload, context.startedAt);
  }

  function showHttpError(status, payload) {
    const error = payload && typeof payload === "object" && payload.error && typeof payload.error === "object"
      ? payload.error : {};
    const code = String(error.code || "");
    let message = typeof error.message === "string" && error.message.trim() ? error.message.trim() : "";
    let title;
    if (status === 401 || code === "UNAUTHENTICATED") {
      title = "An access token is needed";
      const hadToken = Boolean(token());
      message = (message || "This server needs an access token.") + (hadToken
        ? " The token was not accepted: check it in the Access token field and try again."
        : " Enter it in the Access token field and try again.");
      showError(title, message);
      showTokenField(true);
      return;
    }
    if (status === 413) title = "That recording is too large";
    else if (status === 429 || code === "RESOURCE_EXHAUSTED") title = "The server is busy";
    else if (status === 400 || code === "INVALID_ARGUMENT") title = "Earworm could not use that recording";
    else if (status === 503 || code === "UNAVAILABLE") title = "Earworm is not ready";
    else if (status === 504 || code === "DEADLINE_EXCEEDED") title = "No answer in time";
    else title = "Something went wrong on the server";
    if (!message) message = "The server answered with an error (HTTP " + status + "). Try again in a moment.";
    showError(title, message);
  }

  // ---- rendering the results ----------------------------------------------------------------------

  function normaliseTrack(track) {
    if (!track || typeof track !== "object") return null;
    const midi = field(track, "midi");
    if (!Array.isArray(midi) || midi.length === 0) return null;
    const hop = toNumber(field(track, "hop_seconds"), 0);
    return {
      start: toNumber(field(track, "start_seconds"), 0),
      hop: hop > 0 ? hop : 0.02,
      midi: midi.map(function (v) { return toNumber(v, 0); }),
      source: String(field(track, "source") || ""),
    };
  }

  function normaliseMatch(match, i) {
    const tempo = toNumber(field(match, "tempo_ratio"), 1);
    const trackId = String(field(match, "track_id") || "");
    return {
      trackId: trackId,
      title: String(field(match, "title") || trackId || "Untitled"),
      artist: String(field(match, "artist") || ""),
      score: toNumber(field(match, "score"), 0),
      offset: Math.max(0, toNumber(field(match, "offset_seconds"), 0)),
      rank: toNumber(field(match, "rank"), 0) || i + 1,
      tempo: tempo > 0 ? tempo : 1,
      masterPitch: normaliseTrack(field(match, "master_pitch")),
    };
  }

  /** "match" | "no-match" | "no-melody" from a response. */
  function answerKind(response, matches) {
    const reason = field(response, "no_match_reason");
    if (reason === 2 || String(reason).indexOf("NO_MELODY") >= 0) return "no-melody";
    if (field(response, "no_match") || matches.length === 0) return "no-match";
    return "match";
  }

  /** options: {interim: true} for a live guess while humming; {live: "early"|"final", heard} for a
   * live final answer (early: the server was sure before Stop). */
  function renderAnswer(response, startedAt, options) {
    const opts = options || {};
    const matches = (Array.isArray(field(response, "matches")) ? field(response, "matches") : [])
      .filter(function (m) { return m && typeof m === "object"; })
      .map(normaliseMatch);
    const melody = field(response, "melody") || {};
    const answer = {
      kind: answerKind(response, matches),
      matches: matches,
      threshold: toNumber(field(response, "no_match_threshold"), NaN),
      audioSeconds: toNumber(field(response, "audio_seconds"), NaN),
      explanation: String(field(melody, "explanation") || ""),
      queryPitch: normaliseTrack(field(response, "query_pitch")),
    };
    clearAnswer();
    state.answer = answer;
    updateVersions(response);

    if (answer.kind === "match") renderMatchVerdict(answer);
    else if (answer.kind === "no-match") renderNoMatchVerdict(answer);
    else renderNoMelodyVerdict(answer);

    if (answer.kind !== "no-melody") {
      el.results.classList.toggle("is-unsure", answer.kind === "no-match");
      el.results.setAttribute("aria-label", answer.kind === "match" ? "Ranked songs" : "Closest songs (not sure)");
      answer.matches.forEach(function (match, i) {
        el.results.appendChild(renderMatch(match, i, answer.kind === "match" && i === 0));
      });
    }

    if (answer.matches.length && answer.kind !== "no-melody") selectMatch(0);
    else if (answer.kind === "no-melody" && answer.queryPitch) setPlot(buildHeardPlot(answer.queryPitch));
    else setPlot(null);

    if (opts.interim) {
      renderInterim(answer, opts.heard);
      return;
    }
    const ms = performance.now() - startedAt;
    if (opts.live) document.body.dataset.live = opts.live;
    if (opts.live === "early") {
      el.answerTime.textContent = "sure after " + opts.heard.toFixed(1) + " s of humming (live)";
      document.body.dataset.answerMs = "0";
      return;
    }
    el.answerTime.textContent = "answered in " + (ms / 1000).toFixed(2) + " s" + (opts.live ? " (live)" : "");
    document.body.dataset.answerMs = ms.toFixed(1);
  }

  /** A live guess while the person still hums: marked as a guess, the song list dimmed. */
  function renderInterim(answer, heard) {
    document.body.dataset.live = "interim";
    el.verdict.dataset.interim = "true";
    el.results.classList.add("is-interim");
    if (answer.kind === "match") {
      const kicker = el.verdict.querySelector(".verdict-kicker");
      if (kicker) kicker.textContent = "Best guess so far";
    } else {
      setVerdict("pending", "Listening… nothing sure yet");
    }
    setStatus("Still listening — " + heard.toFixed(1) + " s heard. The guess firms up as you go on; press Stop when you are done.");
  }

  function renderMatchVerdict(answer) {
    const best = answer.matches[0];
    const heading = document.createDocumentFragment();
    heading.appendChild(make("span", "verdict-kicker", "Best match"));
    heading.appendChild(make("span", "verdict-title", best.title));
    if (best.artist) heading.appendChild(make("span", "verdict-artist", " · " + best.artist));
    setVerdict("match", heading);

    const parts = [make("span", "visually-hidden", "Best match: " + best.title + (best.artist ? " by " + best.artist : "") + ". ")];
    let line = "Score " + formatScore(best.score);
    if (Number.isFinite(answer.threshold)) line += " (sure above " + formatScore(answer.threshold) + ")";
    if (Number.isFinite(answer.audioSeconds) && answer.audioSeconds > 0) {
      line += " · from " + answer.audioSeconds.toFixed(1) + " s of audio";
    }
    if (answer.matches.length > 1) line += " · " + plural(answer.matches.length - 1, "other candidate", "other candidates");
    parts.push(line + ".");
    setStatus(parts);
  }

  function renderNoMatchVerdict(answer) {
    setVerdict("no-match", "No match: this tune does not seem to be in the catalogue");
    if (answer.matches.length) {
      let line = "Not sure — the closest were these, but none scored high enough";
      if (Number.isFinite(answer.threshold)) {
        line += " (best " + formatScore(answer.matches[0].score) + ", sure above " + formatScore(answer.threshold) + ")";
      }
      setStatus(line + ".");
    } else {
      setStatus("No song in the catalogue came close. If it is in there, try humming a longer or clearer part of it.");
    }
  }

  function renderNoMelodyVerdict(answer) {
    setVerdict("no-melody", "No melody heard");
    const parts = [];
    if (answer.explanation) parts.push(answer.explanation.replace(/[.\s]+$/, "") + ". ");
    else parts.push("Earworm could not hear a tune in that recording. ");
    parts.push("Hum, whistle or sing the tune — a few different notes, about 10 seconds, close to the microphone.");
    setStatus(parts);
  }

  function updateVersions(response) {
    const model = field(response, "model_version");
    const index = field(response, "index_version");
    if (model) state.info.model_version = String(model);
    if (index) state.info.index_version = String(index);
    if (model || index) renderServerInfo();
  }

  function renderMatch(match, i, isAnswer) {
    const item = make("li", "match" + (isAnswer ? " is-answer" : ""));
    item.dataset.trackId = match.trackId;
    item.dataset.rank = String(match.rank);
    item.dataset.score = String(match.score);

    item.appendChild(make("span", "match-rank", match.rank)).setAttribute("aria-hidden", "true");

    const text = make("span", "match-text");
    text.appendChild(make("span", "match-title", match.title));
    if (match.artist) {
      text.appendChild(make("span", "match-sep", " · ")).setAttribute("aria-hidden", "true");
      text.appendChild(make("span", "match-artist", match.artist));
    }
    item.appendChild(text);

    const score = make("span", "match-score");
    const figure = make("span", "score-value");
    figure.appendChild(document.createTextNode("score "));
    figure.appendChild(make("strong", "", formatScore(match.score)));
    score.appendChild(figure);
    const bar = make("span", "score-bar");
    bar.setAttribute("aria-hidden", "true");
    const fill = make("span");
    fill.style.width = Math.round(clamp(match.score, 0, 1) * 100) + "%";
    bar.appendChild(fill);
    score.appendChild(bar);
    item.appendChild(score);

    const actions = make("span", "match-actions");
    const why = make("button", "small-button why", "Why?");
    why.type = "button";
    why.setAttribute("aria-pressed", "false");
    why.setAttribute("aria-controls", "contour");
    why.setAttribute("aria-label", "Why? Compare your hum with " + match.title);
    why.addEventListener("click", function () { selectMatch(i); });
    actions.appendChild(why);
    if (state.info.master_audio && match.trackId) {
      const play = make("button", "small-button play", "Play from " + formatClock(match.offset));
      play.type = "button";
      play.setAttribute("aria-label", "Play from " + formatClock(match.offset) + ": " + match.title);
      play.addEventListener("click", function () { playMaster(match); });
      actions.appendChild(play);
    }
    item.appendChild(actions);

    // A click anywhere else on the row also selects it (the buttons are the keyboard way).
    item.addEventListener("click", function (event) {
      if (!event.target.closest("button")) selectMatch(i);
    });
    return item;
  }

  function selectMatch(i) {
    const answer = state.answer;
    if (!answer || !answer.matches[i]) return;
    state.selected = i;
    Array.prototype.forEach.call(el.results.children, function (item, j) {
      item.classList.toggle("is-selected", j === i);
      const why = item.querySelector(".why");
      if (why) why.setAttribute("aria-pressed", j === i ? "true" : "false");
    });
    setPlot(buildMatchPlot(answer.matches[i], answer.queryPitch));
  }

  // ---- the "why it matched" plot --------------------------------------------------------------

  /**
   * The voiced stretches of a pitch track as segments of {t, v}; time mapped, pitch shifted.
   * A leap of more than SETTINGS.maxJoinSemitones from one frame to the next (mostly a pitch
   * tracker's octave slip) starts a new segment rather than drawing a tall spike.
   */
  function segmentsOf(track, mapTime, shift) {
    const segments = [];
    let current = null;
    let previous = 0;
    let count = 0;
    for (let i = 0; i < track.midi.length; i += 1) {
      const v = track.midi[i];
      if (v > 0) {
        if (current && Math.abs(v - previous) > SETTINGS.maxJoinSemitones) current = null;
        previous = v;
        if (!current) {
          current = [];
          segments.push(current);
        }
        current.push({ t: mapTime(track.start + i * track.hop), v: v + shift });
        count += 1;
      } else {
        current = null;
      }
    }
    return { segments: segments, count: count };
  }

  /**
   * The whole number of semitones (-24..+24) that brings the hum closest to the master's melody:
   * the smallest mean absolute difference over the frames where both are voiced, the query's time t
   * read at the master's time offset + t * tempo. Ties go to the smaller shift.
   * Returns {semitones, error (mean |difference| in semitones, NaN without overlap), frames}.
   */
  function bestTranspose(query, master, offset, tempo) {
    const pairs = [];
    for (let i = 0; i < query.midi.length; i += 1) {
      const q = query.midi[i];
      if (!(q > 0)) continue;
      const t = offset + (query.start + i * query.hop) * tempo;
      const j = Math.round((t - master.start) / master.hop);
      if (j < 0 || j >= master.midi.length) continue;
      const m = master.midi[j];
      if (m > 0) pairs.push(m - q);
    }
    if (pairs.length === 0) return { semitones: 0, error: NaN, frames: 0 };
    let best = { semitones: 0, error: Infinity, frames: pairs.length };
    for (let step = 0; step <= 2 * SETTINGS.transposeRange; step += 1) {
      const k = step % 2 === 0 ? step / 2 : -(step + 1) / 2;  // 0, -1, 1, -2, 2 … : ties keep the smaller shift
      let sum = 0;
      for (let p = 0; p < pairs.length; p += 1) sum += Math.abs(pairs[p] - k);
      const error = sum / pairs.length;
      if (error < best.error - 1e-9) best = { semitones: k, error: error, frames: pairs.length };
    }
    return best;
  }

  function transposeWords(k) {
    if (k === 0) return "not moved (you hummed in the song's key)";
    const n = Math.abs(k);
    let words = "moved " + (k > 0 ? "up " : "down ") + plural(n, "semitone", "semitones");
    if (n === 12) words += " (an octave)";
    else if (n === 24) words += " (two octaves)";
    return words;
  }

  function tempoWords(tempo) {
    if (Math.abs(tempo - 1) < 0.02) return "";
    const factor = (Math.round(tempo * 100) / 100) + "×";
    return tempo > 1 ? "stretched " + factor + " to the song's tempo" : "squeezed to " + factor + " of its length to the song's tempo";
  }

  function closenessWords(error) {
    if (!Number.isFinite(error)) return "";
    const amount = error.toFixed(1) + " semitones apart on average";
    if (error < 0.75) return "They follow each other closely: " + amount + ".";
    if (error < 1.5) return "They follow each other roughly: " + amount + ".";
    return "They only loosely agree: " + amount + ".";
  }

  /** The plot for one match: the master's melody and the hum on the master's clock, transposed. */
  function buildMatchPlot(match, query) {
    const master = match.masterPitch;
    const plot = {
      heading: state.answer && state.answer.kind === "no-match" ? "How close it came" : "Why it matched",
      trackId: match.trackId, xLabel: "seconds into the song (master clock)",
      master: null, hum: null, humCount: 0, semitones: 0, error: NaN,
    };
    if (master) plot.master = segmentsOf(master, function (t) { return t; }, 0).segments;
    if (query) {
      const fit = master ? bestTranspose(query, master, match.offset, match.tempo) : { semitones: 0, error: NaN };
      plot.semitones = fit.semitones;
      plot.error = fit.error;
      const hum = segmentsOf(query, function (t) { return match.offset + t * match.tempo; }, fit.semitones);
      plot.hum = hum.segments;
      plot.humCount = hum.count;
    }

    const caption = document.createDocumentFragment();
    caption.appendChild(make("strong", "", match.title));
    caption.appendChild(document.createTextNode(": "));
    const sentences = [];
    if (master && query) {
      const sourceWords = master.source === "midi" ? "from its melody file" : "as heard in the recording";
      const tempo = tempoWords(match.tempo);
      caption.appendChild(swatch("master"));
      caption.appendChild(document.createTextNode("the song's melody (" + sourceWords + ") and "));
      caption.appendChild(swatch("hum"));
      caption.appendChild(document.createTextNode("your hum, " + transposeWords(plot.semitones) +
        (tempo ? ", " + tempo : "") + ", lined up at " + formatClock(match.offset) + ". "));
      sentences.push(closenessWords(plot.error), "Gaps are where there is no pitch.");
      plot.label = "Melody plot for " + match.title + ": the song's melody as a thick line and your hum, " +
        transposeWords(plot.semitones) + (tempo ? ", " + tempo : "") + ", as a thin line, over seconds " +
        "into the song from " + formatClock(match.offset) + ". " + closenessWords(plot.error);
    } else if (query) {
      caption.appendChild(swatch("hum"));
      caption.appendChild(document.createTextNode("your hum, placed at " + formatClock(match.offset) + " in the song. "));
      sentences.push("The song's melody is not available for this match, so there is nothing to compare it with.");
      plot.label = "Melody plot for " + match.title + ": only your hum is drawn; the song's melody is not available.";
    } else if (master) {
      caption.appendChild(swatch("master"));
      caption.appendChild(document.createTextNode("the song's melody from " + formatClock(match.offset) + ". "));
      sentences.push("The pitch of your hum did not come with this answer.");
      plot.label = "Melody plot for " + match.title + ": only the song's melody is drawn.";
    } else {
      sentences.push("No melody is available for this match, so there is nothing to draw.");
      plot.label = "Melody plot for " + match.title + ": no melody is available for this match.";
      plot.empty = "No melody to compare for this match.";
    }
    caption.appendChild(document.createTextNode(sentences.filter(Boolean).join(" ")));
    plot.caption = caption;
    return plot;
  }

  /** No melody heard: draw what was heard, on the recording's own clock. */
  function buildHeardPlot(query) {
    const hum = segmentsOf(query, function (t) { return t; }, 0);
    const caption = document.createDocumentFragment();
    caption.appendChild(make("strong", "", "What Earworm heard"));
    caption.appendChild(document.createTextNode(": "));
    caption.appendChild(swatch("hum"));
    caption.appendChild(document.createTextNode("the pitch of your recording over time (gaps: no pitch). " +
      "A tune needs several different notes, each held for a moment."));
    return {
      heading: "What Earworm heard",
      trackId: "", xLabel: "seconds into your recording", master: null, hum: hum.segments, humCount: hum.count,
      semitones: 0, error: NaN, caption: caption,
      label: "Pitch of your recording over time: " + plural(hum.count, "pitched moment", "pitched moments") +
        " were heard, not enough for a melody.",
      empty: hum.count ? "" : "No pitch was heard at all.",
    };
  }

  function swatch(kind) {
    const node = make("span", "swatch swatch-" + kind);
    node.setAttribute("aria-hidden", "true");
    return node;
  }

  function setPlot(plot) {
    state.plot = plot;
    el.plotTitle.textContent = plot ? plot.heading : "Why it matched";
    if (plot) {
      el.caption.replaceChildren(plot.caption);
      el.canvas.setAttribute("aria-label", plot.label);
      el.canvas.dataset.trackId = plot.trackId || "";
      el.canvas.dataset.transpose = String(plot.semitones);
    } else {
      el.caption.textContent = "Pitch over time: the song's melody as a thick line, your hum as a thin line on top of it.";
      el.canvas.setAttribute("aria-label", "Melody plot: nothing to show yet.");
      delete el.canvas.dataset.trackId;
      delete el.canvas.dataset.transpose;
    }
    drawPlot();
  }

  function scheduleRedraw() {
    if (state.redrawFrame) return;
    state.redrawFrame = requestAnimationFrame(function () {
      state.redrawFrame = 0;
      drawPlot();
    });
  }

  /** The x and y ranges of what is drawn. */
  function plotExtent(plot) {
    let t0 = Infinity;
    let t1 = -Infinity;
    const values = [];
    [plot.master, plot.hum].forEach(function (segments) {
      (segments || []).forEach(function (segment) {
        segment.forEach(function (p) {
          if (p.t < t0) t0 = p.t;
          if (p.t > t1) t1 = p.t;
          values.push(p.v);
        });
      });
    });
    if (!values.length) return null;
    values.sort(function (a, b) { return a - b; });
    // The hum may have a stray octave jump: range over the 2nd..98th percentile, clip the rest.
    const lo = values[Math.floor(values.length * 0.02)];
    const hi = values[Math.min(values.length - 1, Math.ceil(values.length * 0.98) - 1)];
    let v0 = Math.floor(lo - 1.5);
    let v1 = Math.ceil(hi + 1.5);
    if (v1 - v0 < 12) {
      const middle = (v0 + v1) / 2;
      v0 = Math.floor(middle - 6);
      v1 = v0 + 12;
    }
    if (t1 - t0 < 1) {
      const middle = (t0 + t1) / 2;
      t0 = middle - 0.5;
      t1 = middle + 0.5;
    }
    return { t0: t0, t1: t1, v0: v0, v1: v1 };
  }

  function niceStep(span, wanted) {
    const steps = [0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];
    const raw = span / Math.max(1, wanted);
    for (let i = 0; i < steps.length; i += 1) if (steps[i] >= raw) return steps[i];
    return steps[steps.length - 1];
  }

  /** Which notes get a label and a grid line, given the pixels per semitone. */
  function labelledPitchClasses(pxPerSemitone) {
    if (pxPerSemitone >= 12) return [0, 2, 4, 5, 7, 9, 11];
    if (pxPerSemitone >= 7) return [0, 4, 7];
    if (pxPerSemitone >= 3.5) return [0, 7];
    return [0];
  }

  function drawPlot() {
    const canvas = el.canvas;
    const box = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(box.width * dpr));
    const height = Math.max(1, Math.round(box.height * dpr));
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, box.width, box.height);

    const plot = state.plot;
    const extent = plot ? plotExtent(plot) : null;
    el.plotEmpty.hidden = Boolean(extent);
    el.plotEmpty.textContent = plot ? (plot.empty || "Nothing to draw.") : "The song's melody and your hum will be drawn here.";
    if (!plot) {
      canvas.dataset.drawn = "false";
      canvas.dataset.points = "0";
      return;
    }
    if (extent && box.width > 0 && box.height > 0) drawAxesAndLines(ctx, plot, extent, box.width, box.height);
    canvas.dataset.drawn = "true";
    canvas.dataset.points = String(extent ? plot.humCount : 0);
  }

  function drawAxesAndLines(ctx, plot, extent, w, h) {
    const small = w < 480;
    const font = (small ? 11 : 12) + "px " + cssVar("--font", "sans-serif");
    const pad = { left: small ? 40 : 46, right: 12, top: 12, bottom: small ? 34 : 38 };
    const pw = Math.max(10, w - pad.left - pad.right);
    const ph = Math.max(10, h - pad.top - pad.bottom);
    const x = function (t) { return pad.left + ((t - extent.t0) / (extent.t1 - extent.t0)) * pw; };
    const y = function (v) { return pad.top + (1 - (v - extent.v0) / (extent.v1 - extent.v0)) * ph; };
    const colors = {
      grid: cssVar("--plot-grid", "#e6e8f2"),
      gridStrong: cssVar("--plot-grid-strong", "#c9cce0"),
      text: cssVar("--plot-text", "#5b6078"),
      master: cssVar("--plot-master", "#4f46e5"),
      hum: cssVar("--plot-hum", "#f97316"),
      playhead: cssVar("--plot-playhead", "#e11d48"),
    };
    ctx.font = font;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";

    // y: note names
    const pxPerSemitone = ph / (extent.v1 - extent.v0);
    const classes = labelledPitchClasses(pxPerSemitone);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let n = Math.ceil(extent.v0); n <= Math.floor(extent.v1); n += 1) {
      const pc = ((n % 12) + 12) % 12;
      if (classes.indexOf(pc) < 0) continue;
      const yy = Math.round(y(n)) + 0.5;
      ctx.strokeStyle = pc === 0 ? colors.gridStrong : colors.grid;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(pad.left, yy);
      ctx.lineTo(pad.left + pw, yy);
      ctx.stroke();
      ctx.fillStyle = colors.text;
      ctx.fillText(noteName(n), pad.left - 6, yy);
    }

    // x: seconds
    const step = niceStep(extent.t1 - extent.t0, Math.floor(pw / (small ? 64 : 84)));
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(extent.t0 / step) * step; t <= extent.t1 + 1e-9; t += step) {
      const xx = Math.round(x(t)) + 0.5;
      ctx.strokeStyle = colors.grid;
      ctx.beginPath();
      ctx.moveTo(xx, pad.top);
      ctx.lineTo(xx, pad.top + ph);
      ctx.stroke();
      ctx.fillStyle = colors.text;
      ctx.fillText(step < 1 ? t.toFixed(step < 0.5 ? 2 : 1) : String(Math.round(t)), xx, pad.top + ph + 4);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText(plot.xLabel, pad.left + pw, h - 2);

    // the lines, clipped to the plot area
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.left, pad.top - 2, pw, ph + 4);
    ctx.clip();
    if (plot.master) {
      ctx.globalAlpha = 0.45;
      strokeSegments(ctx, plot.master, x, y, colors.master, small ? 5 : 6);
      ctx.globalAlpha = 1;
    }
    if (plot.hum) strokeSegments(ctx, plot.hum, x, y, colors.hum, 2.25);
    const playhead = playheadTime(plot);
    if (playhead !== null && playhead >= extent.t0 && playhead <= extent.t1) {
      ctx.strokeStyle = colors.playhead;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.moveTo(x(playhead), pad.top);
      ctx.lineTo(x(playhead), pad.top + ph);
      ctx.stroke();
    }
    ctx.restore();
  }

  /** Voiced stretches as lines, single voiced frames as dots: unvoiced frames stay gaps. */
  function strokeSegments(ctx, segments, x, y, color, width) {
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = width;
    segments.forEach(function (segment) {
      if (segment.length === 1) {
        ctx.beginPath();
        ctx.arc(x(segment[0].t), y(segment[0].v), width / 2 + 0.5, 0, Math.PI * 2);
        ctx.fill();
        return;
      }
      ctx.beginPath();
      segment.forEach(function (p, i) {
        if (i === 0) ctx.moveTo(x(p.t), y(p.v));
        else ctx.lineTo(x(p.t), y(p.v));
      });
      ctx.stroke();
    });
  }

  // ---- playback -------------------------------------------------------------------------------------

  function playMaster(match) {
    const audio = el.player;
    audio.hidden = false;
    if (state.pendingSeek) {
      audio.removeEventListener("loadedmetadata", state.pendingSeek);
      state.pendingSeek = null;
    }
    state.playing = match;
    setStatusNote("Playing “" + match.title + "” from " + formatClock(match.offset) + ".");

    const seekAndPlay = function () {
      state.pendingSeek = null;
      try {
        audio.currentTime = match.offset;
      } catch (err) { /* not seekable yet: plays from the start */ }
      const playing = audio.play();
      if (playing && typeof playing.catch === "function") {
        playing.catch(function (err) {
          if (err && err.name !== "AbortError") setStatusNote("“" + match.title + "” could not be played: " + err.message);
        });
      }
    };

    if (audio.dataset.trackId === match.trackId && audio.readyState >= 1) {
      seekAndPlay();
      return;
    }
    audio.dataset.trackId = match.trackId;
    state.pendingSeek = seekAndPlay;
    audio.addEventListener("loadedmetadata", seekAndPlay, { once: true });
    const url = "/v1/tracks/" + encodeURIComponent(match.trackId) + "/audio";
    if (token()) {
      loadMasterWithToken(url, match);  // an <audio> element cannot send the bearer header itself
    } else {
      audio.src = url;
      audio.load();
    }
  }

  async function loadMasterWithToken(url, match) {
    try {
      const response = await fetch(url, { headers: authHeaders() });
      if (!response.ok) throw new Error(response.status === 401 ? "the access token was not accepted" : "HTTP " + response.status);
      const blob = await response.blob();
      if (state.playing !== match) return;
      if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
      state.objectUrl = URL.createObjectURL(blob);
      el.player.src = state.objectUrl;
      el.player.load();
    } catch (err) {
      if (state.playing === match) setStatusNote("The recording of “" + match.title + "” could not be loaded (" + err.message + ").");
    }
  }

  function stopPlayback() {
    const audio = el.player;
    state.playing = null;
    if (state.pendingSeek) {
      audio.removeEventListener("loadedmetadata", state.pendingSeek);
      state.pendingSeek = null;
    }
    if (!audio.getAttribute("src")) return;
    audio.pause();
    audio.removeAttribute("src");
    delete audio.dataset.trackId;
    audio.load();
    audio.hidden = true;
    if (state.objectUrl) {
      URL.revokeObjectURL(state.objectUrl);
      state.objectUrl = null;
    }
  }

  /** A note after the status line's current text, for playback messages (the answer stays). */
  function setStatusNote(text) {
    let note = el.status.querySelector(".status-note");
    if (!note) {
      note = make("span", "status-note");
      el.status.appendChild(note);
    }
    note.textContent = " " + text;
  }

  function playheadTime(plot) {
    const audio = el.player;
    if (!state.playing || !plot || plot.trackId !== state.playing.trackId) return null;
    if (audio.paused && audio.currentTime === 0) return null;
    return audio.currentTime;
  }

  function followPlayhead() {
    cancelAnimationFrame(state.playheadFrame);
    const step = function () {
      drawPlot();
      if (!el.player.paused && !el.player.ended) state.playheadFrame = requestAnimationFrame(step);
    };
    state.playheadFrame = requestAnimationFrame(step);
  }

  function initPlayer() {
    const audio = el.player;
    audio.addEventListener("play", followPlayhead);
    audio.addEventListener("seeked", scheduleRedraw);
    audio.addEventListener("pause", scheduleRedraw);
    audio.addEventListener("error", function () {
      if (!state.playing || !audio.getAttribute("src")) return;
      setStatusNote("The recording of “" + state.playing.title + "” is not available.");
    });
  }

  // ---- start --------------------------------------------------------------------------------------

  function bindElements() {
    ["record", "timer", "level", "file", "status", "verdict", "results", "contour", "player", "token"]
      .forEach(function (id) { el[id] = byId(id); });
    el.canvas = el.contour;
    el.recordLabel = el.record.querySelector(".record-label") || el.record;
    el.timerMax = byId("timer-max") || make("span");
    el.answerTime = byId("answer-time");
    el.tokenField = byId("token-field");
    el.serverInfo = byId("server-info");
    el.caption = byId("contour-caption");
    el.plotEmpty = byId("plot-empty");
    el.plotTitle = byId("plot-title") || make("span");
    el.plotBox = byId("plot-box") || el.canvas.parentElement;
    el.capture = el.record.closest(".capture") || document.body;
    el.upload = el.file.closest(".upload") || el.file.parentElement;
    el.live = byId("live");
  }

  function init() {
    bindElements();
    el.timerMax.textContent = formatNumber(recordLimit());
    el.record.addEventListener("click", toggleRecording);
    el.file.addEventListener("change", onFileChosen);
    initToken();
    initLiveToggle();
    initDropZone();
    initPlayer();
    if (typeof ResizeObserver === "function") new ResizeObserver(scheduleRedraw).observe(el.plotBox);
    window.addEventListener("resize", scheduleRedraw);
    drawPlot();
    loadInfo();
  }

  window.Earworm = Object.freeze({
    bestTranspose: bestTranspose,
    noteName: noteName,
    /** Render a response as if the server had just sent it (for tests and demos). */
    render: function (response) { renderAnswer(response, performance.now()); },
    select: selectMatch,
    redraw: drawPlot,
    state: function () {
      return { recording: Boolean(state.recording), busy: Boolean(state.request), live: Boolean(state.live),
               liveLog: state.liveLog.slice(),
               selected: state.selected,
               kind: state.answer ? state.answer.kind : null, info: Object.assign({}, state.info) };
    },
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

/* Earworm live mode: an AudioWorklet that hands the microphone's samples (mixed to mono) to the
 * page, which turns them into 16-bit PCM for the server's WS /v1/stream. */
class EarwormPcmTap extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input.length && input[0].length) {
      const n = input[0].length;
      const mono = new Float32Array(n);
      for (let c = 0; c < input.length; c += 1) {
        const channel = input[c];
        for (let i = 0; i < n; i += 1) mono[i] += channel[i] / input.length;
      }
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}

registerProcessor("earworm-pcm-tap", EarwormPcmTap);

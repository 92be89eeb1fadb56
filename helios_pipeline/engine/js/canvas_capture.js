// helios_pipeline canvas capture: encode the composition's <canvas> inside the page with
// WebCodecs, or hand it back as an image when WebCodecs cannot be used. Installed after load.
(() => {
  if (window.__helios_canvas) return;
  let canvas = null;
  let encoder = null;
  let encoderError = null;
  let fps = 30;
  let pending = []; // encoded chunks not yet handed to the renderer
  let wakeOnError = null; // ends a wait for the encoder when the encoder fails
  // Frames the encoder may hold before the next seek waits for it. Unbounded, the seeks ran ahead,
  // the encoder fell behind (its output is delivered on this thread, between calls) and its flush
  // held the chunk up by ~1 s at 720p; bounded, seeking and encoding overlap.
  const MAX_QUEUED_FRAMES = 4;
  let imageType = "image/png";
  let imageQuality = 0.9;

  function waitForCanvas(selector, timeoutMs) {
    // the page's timers run in virtual time: poll with the real ones the seek driver kept
    const realSetTimeout = window.__helios_real_set_timeout;
    return new Promise((resolve, reject) => {
      let waited = 0;
      const poll = () => {
        const found = document.querySelector(selector);
        if (found instanceof HTMLCanvasElement) return resolve(found);
        waited += 50;
        if (waited >= timeoutMs) return reject(new Error(`no <canvas> matches ${JSON.stringify(selector)}`));
        realSetTimeout(poll, 50);
      };
      poll();
    });
  }

  async function pickEncoder(config) {
    const accelerations =
      config.preference === "software" ? ["prefer-software"] : ["prefer-hardware", "no-preference"];
    for (const codec of config.candidates) {
      for (const hardwareAcceleration of accelerations) {
        const settings = {
          codec,
          width: config.width,
          height: config.height,
          bitrate: config.bitrate,
          framerate: config.fps,
          hardwareAcceleration,
          latencyMode: "quality",
        };
        if (codec.startsWith("avc1")) settings.avc = { format: "annexb" };
        try {
          const support = await VideoEncoder.isConfigSupported(settings);
          if (support.supported) return support.config;
        } catch (error) {
          // an unknown codec string throws: try the next candidate
        }
      }
    }
    return null;
  }

  window.__helios_canvas = {
    async setup(config) {
      fps = config.fps;
      imageType = config.imageFormat === "jpeg" ? "image/jpeg" : "image/png";
      imageQuality = config.imageQuality / 100;
      canvas = await waitForCanvas(config.selector, config.canvasTimeout);
      if (config.preference === "disabled" || typeof VideoEncoder === "undefined") return { mode: "image" };
      const chosen = await pickEncoder(config);
      if (!chosen) return { mode: "image" };
      encoder = new VideoEncoder({
        output: (chunk) => {
          const data = new Uint8Array(chunk.byteLength);
          chunk.copyTo(data);
          pending.push({ data, key: chunk.type === "key" });
        },
        error: (error) => {
          encoderError = error;
          if (wakeOnError) wakeOnError();
        },
      });
      encoder.configure(chosen);
      return { mode: "webcodecs", codec: chosen.codec, acceleration: chosen.hardwareAcceleration };
    },

    // Encode the canvas as chunk-local frame `index` (the first frame of a chunk is a key frame).
    encode(index) {
      if (encoderError) throw encoderError;
      const frame = new VideoFrame(canvas, {
        timestamp: Math.round((index * 1e6) / fps),
        duration: Math.round(1e6 / fps),
      });
      try {
        encoder.encode(frame, { keyFrame: index === 0 });
      } finally {
        frame.close();
      }
    },

    // Seek and encode consecutive frames ([[index, frame, ms], ...]) in one call, so a frame
    // costs no CDP round trip of its own. Stops after `budgetMs` of real time (the next call goes
    // on), so a call takes at most that longer than its slowest frame. Returns what the encoder
    // produced so far, how many frames were encoded, the frames the encoder still holds, and the
    // frame whose seek failed, if any.
    async encodeFrames(frames, budgetMs) {
      const started = realNow();
      let count = 0;
      for (const [index, frame, ms] of frames) {
        try {
          await window.__helios_seek(frame, ms); // timeline.js
        } catch (error) {
          return { ...(await this.take()), count, failure: { frame, text: describe(error) } };
        }
        this.encode(index);
        count += 1;
        await encoderRoom();
        if (realNow() - started >= budgetMs) break;
      }
      return { ...(await this.take()), count, queued: encoder.encodeQueueSize };
    },

    // Hand over what the encoder has produced so far: base64 payload plus each chunk's size.
    async take() {
      if (encoderError) throw encoderError;
      const taken = pending;
      pending = [];
      return { data: await toBase64(taken.map((c) => c.data)), sizes: taken.map((c) => c.data.length) };
    },

    async finish() {
      await encoder.flush();
      const rest = await this.take();
      encoder.close();
      return rest;
    },

    // Without WebCodecs: the canvas as one image (JPEG or PNG), base64.
    image() {
      const url = canvas.toDataURL(imageType, imageQuality);
      return url.slice(url.indexOf(",") + 1);
    },
  };

  // Resolves once the encoder holds at most MAX_QUEUED_FRAMES frames, or has failed.
  async function encoderRoom() {
    while (!encoderError && encoder.encodeQueueSize > MAX_QUEUED_FRAMES) {
      await new Promise((resolve) => {
        wakeOnError = resolve;
        encoder.addEventListener("dequeue", resolve, { once: true });
      });
      wakeOnError = null;
    }
  }

  // the page's performance.now() is the virtual clock (timeline.js): the prototype's is the real one
  function realNow() {
    return Performance.prototype.now.call(performance);
  }

  // the first line a page error shows (as CDP describes a thrown value)
  function describe(error) {
    if (error instanceof Error) return `${error.name}: ${error.message}`;
    return String(error);
  }

  function toBase64(parts) {
    if (!parts.length) return Promise.resolve("");
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => {
        const url = String(reader.result);
        resolve(url.slice(url.indexOf(",") + 1));
      };
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(new Blob(parts));
    });
  }
})();

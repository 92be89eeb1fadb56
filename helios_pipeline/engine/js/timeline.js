// helios_pipeline seek driver, injected before any page script runs.
// Time is seeked, never played: window.__helios_seek(frame, ms) moves a virtual clock to `ms`
// and brings every time source of the page there (clock, timers, rAF, Helios, WAAPI/CSS
// animations, GSAP, media), then waits until the frame is ready to be captured.
(() => {
  if (window.__helios_seek) return;
  const config = __HELIOS_CONFIG__;
  const realSetTimeout = window.setTimeout.bind(window);
  const realClearTimeout = window.clearTimeout.bind(window);
  Object.defineProperty(window, "__helios_real_set_timeout", { value: realSetTimeout });

  // -- inputs and determinism ------------------------------------------------------------
  window.__HELIOS_PROPS__ = config.props;
  window.__HELIOS_VIRTUAL_TIME__ = 0;
  let seed = config.seed >>> 0;
  Math.random = function random() {
    // mulberry32: small, fast, and the same sequence in every chunk and every run
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };

  // -- virtual clock -----------------------------------------------------------------------
  let now = 0; // ms since the composition's frame 0
  const epoch = config.epoch;
  Object.defineProperty(performance, "now", { value: () => now, configurable: true, writable: true });
  const RealDate = Date;
  function VirtualDate(...args) {
    if (!new.target) return new RealDate(epoch + now).toString();
    return args.length ? new RealDate(...args) : new RealDate(epoch + now);
  }
  VirtualDate.prototype = RealDate.prototype;
  VirtualDate.now = () => epoch + now;
  VirtualDate.parse = RealDate.parse;
  VirtualDate.UTC = RealDate.UTC;
  window.Date = VirtualDate;

  // -- timers in virtual time ----------------------------------------------------------------
  let timerSeq = 0; // ids, and the order of timers due at the same time
  let orderSeq = 0;
  const timers = new Map(); // id -> {due, order, fn, args, interval}
  let flushPending = false;
  // errors thrown by callbacks the driver runs fail the frame being seeked, not a later one
  const frameErrors = [];
  function reportError(error) {
    frameErrors.push(error);
  }
  function addTimer(fn, delay, args, repeat) {
    const id = ++timerSeq;
    const wait = Math.max(0, Number(delay) || 0);
    timers.set(id, { due: now + wait, order: ++orderSeq, fn, args, interval: repeat ? Math.max(1, wait) : 0 });
    if (wait === 0 && !flushPending) {
      // a timer due now (setTimeout(fn, 0)) runs promptly, so code that yields with
      // setTimeout does not stall until the next frame; the clock does not move
      flushPending = true;
      realSetTimeout(() => {
        flushPending = false;
        runDue(now);
      }, 0);
    }
    return id;
  }
  window.setTimeout = (fn, delay, ...args) => addTimer(fn, delay, args, false);
  window.setInterval = (fn, delay, ...args) => addTimer(fn, delay, args, true);
  window.clearTimeout = window.clearInterval = (id) => {
    timers.delete(id);
  };
  function nextDue(limit) {
    let bestId = null;
    let best = null;
    for (const [id, timer] of timers) {
      if (timer.due > limit) continue;
      if (!best || timer.due < best.due || (timer.due === best.due && timer.order < best.order)) {
        best = timer;
        bestId = id;
      }
    }
    return bestId;
  }
  function runDue(limit) {
    // fire every timer due by `limit` in time order, each seeing the clock at its due time
    const target = Math.max(now, limit);
    for (let guard = 0; guard < 100000; guard++) {
      const id = nextDue(limit);
      if (id === null) break;
      const timer = timers.get(id);
      now = Math.max(now, timer.due);
      if (timer.interval) {
        timer.due += timer.interval;
        timer.order = ++orderSeq;
      } else {
        timers.delete(id);
      }
      try {
        if (typeof timer.fn === "function") timer.fn(...timer.args);
        else (0, eval)(String(timer.fn));
      } catch (error) {
        reportError(error);
      }
    }
    now = target;
  }

  // -- requestAnimationFrame in virtual time -------------------------------------------------
  let rafSeq = 0;
  let rafQueue = new Map();
  window.requestAnimationFrame = (cb) => {
    const id = ++rafSeq;
    rafQueue.set(id, cb);
    return id;
  };
  window.cancelAnimationFrame = (id) => {
    rafQueue.delete(id);
  };
  function runAnimationFrame(t) {
    const due = rafQueue;
    rafQueue = new Map();
    for (const cb of due.values()) {
      try {
        cb(t);
      } catch (error) {
        reportError(error);
      }
    }
  }

  // -- helpers -------------------------------------------------------------------------------
  function withTimeout(promise, ms, what) {
    let timer;
    const limit = new Promise((_, reject) => {
      timer = realSetTimeout(() => {
        const error = new Error(`timed out after ${ms} ms waiting for ${what}`);
        error.name = "HeliosFrameTimeout";
        reject(error);
      }, ms);
    });
    return Promise.race([promise, limit]).finally(() => realClearTimeout(timer));
  }
  function seekAnimations(roots, t) {
    const seen = new Set();
    for (const root of roots) {
      for (const animation of root.getAnimations ? root.getAnimations() : []) {
        if (seen.has(animation)) continue;
        seen.add(animation);
        animation.pause();
        animation.currentTime = t;
      }
    }
  }
  function mediaTarget(el, t) {
    const offset = parseFloat(el.getAttribute("data-helios-offset") || "0") || 0;
    const start = parseFloat(el.getAttribute("data-helios-seek") || "0") || 0;
    const rate = el.playbackRate || 1;
    let target = Math.max(0, t / 1000 - offset) * rate + start;
    if (el.loop && Number.isFinite(el.duration) && el.duration > 0) target %= el.duration;
    return target;
  }
  function once(el, events) {
    return new Promise((resolve) => {
      const done = () => {
        for (const name of events) el.removeEventListener(name, done);
        resolve();
      };
      for (const name of events) el.addEventListener(name, done);
    });
  }
  async function syncMedia(el, t) {
    if (!el.paused) el.pause();
    const hasSource = el.currentSrc || el.getAttribute("src") || el.querySelector("source[src]");
    if (!hasSource || el.error) return; // nothing to show or hear: nothing to wait for
    if (el.readyState === 0) {
      // not loaded yet (preload="none", or still fetching): load it, then seek
      const loaded = once(el, ["loadedmetadata", "error"]);
      if (el.networkState !== HTMLMediaElement.NETWORK_LOADING) {
        el.preload = "auto";
        el.load();
      }
      await loaded;
      if (el.error) return;
    }
    const target = mediaTarget(el, t);
    if (Math.abs(el.currentTime - target) > 0.0005) {
      const seeked = once(el, ["seeked", "error"]);
      el.currentTime = target;
      await seeked;
    }
    if (el.tagName === "VIDEO" && el.readyState < 2 && !el.error) {
      await once(el, ["canplay", "loadeddata", "error"]); // the picture at the new position
    }
  }
  function seekMedia(roots, t) {
    const waits = [];
    for (const root of roots) {
      for (const el of root.querySelectorAll("audio, video")) waits.push(syncMedia(el, t));
    }
    return Promise.all(waits);
  }
  function pendingImages(roots) {
    const waits = [];
    for (const root of roots) {
      for (const img of root.querySelectorAll("img")) {
        if (!img.complete && img.src) waits.push(img.decode().catch(() => undefined));
      }
    }
    return Promise.all(waits);
  }

  // -- the seek ------------------------------------------------------------------------------
  window.__helios_seek = async (frame, t) => {
    const timeout = config.stabilityTimeout;
    // 1. clock, timers, rAF
    runDue(t);
    await null; // let promise continuations of timer callbacks run
    runDue(t);
    now = t;
    // 2. Helios
    window.__HELIOS_VIRTUAL_TIME__ = t;
    if (window.helios && typeof window.helios.seek === "function") window.helios.seek(frame);
    runAnimationFrame(t);
    // 3. animations (after rAF, which may have created some)
    const roots = window.__helios_all_roots(); // shadow_roots.js
    seekAnimations(roots, t);
    const gsap = window.__helios_gsap_timeline__;
    if (gsap && typeof gsap.seek === "function") {
      gsap.pause && gsap.pause();
      gsap.seek(t / 1000, false);
    }
    if (frameErrors.length) {
      const error = frameErrors.shift();
      frameErrors.length = 0;
      throw error;
    }
    // 4. media, 5. readiness
    await withTimeout(seekMedia(roots, t), timeout, "<audio>/<video> elements to seek");
    await withTimeout(document.fonts.ready, timeout, "document.fonts.ready");
    await withTimeout(pendingImages(roots), timeout, "images to decode");
    if (window.helios && typeof window.helios.waitUntilStable === "function") {
      await withTimeout(Promise.resolve(window.helios.waitUntilStable()), timeout, "helios.waitUntilStable()");
    }
    return frame;
  };
})();

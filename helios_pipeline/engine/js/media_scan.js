// Every <audio>/<video> of the loaded page (open shadow roots included), in document order, with the
// attributes that decide its sound. An async function, evaluated once after load by
// engine/audio/page_audio.py on a page set up by engine/page.py; it walks the same roots as the
// seek driver and mirrors the seek driver's reading of the same attributes
// (timeline.js mediaTarget), so sound and picture agree.
async (metadataTimeout) => {
  const roots = window.__helios_all_roots(); // shadow_roots.js, installed by the page set-up
  const seconds = (el, name) => {
    const value = parseFloat(el.getAttribute(name) || "0");
    return Number.isFinite(value) ? value : 0;
  };
  const elements = [];
  for (const root of roots) {
    for (const el of root.querySelectorAll("audio, video")) elements.push(el);
  }
  const audible = (el) => !el.hasAttribute("data-helios-no-audio") && !el.muted && el.volume > 0;
  const hasSource = (el) => Boolean(el.currentSrc || el.src || el.querySelector("source[src]"));
  // currentSrc is chosen by the media element's resource selection: wait (bounded) until it has run
  const loading = elements
    .filter((el) => audible(el) && hasSource(el) && el.readyState < 1 && !el.error)
    .filter((el) => el.preload !== "none" && el.networkState !== HTMLMediaElement.NETWORK_NO_SOURCE)
    .map((el) => new Promise((resolve) => {
      el.addEventListener("loadedmetadata", resolve, { once: true });
      el.addEventListener("error", resolve, { once: true });
    }));
  if (loading.length) {
    const setTimer = window.__helios_real_set_timeout || window.setTimeout;
    await Promise.race([Promise.all(loading), new Promise((resolve) => setTimer(resolve, metadataTimeout))]);
  }
  return elements.map((el) => {
    let src = el.currentSrc || el.src || "";
    if (!src) {
      const source = el.querySelector("source[src]");
      if (source) src = source.src;
    }
    return {
      tag: el.tagName.toLowerCase(),
      id: el.id || "",
      src,
      noAudio: el.hasAttribute("data-helios-no-audio"),
      muted: el.muted,
      volume: el.volume,
      loop: el.loop,
      playbackRate: el.playbackRate || 1,
      offset: seconds(el, "data-helios-offset"),
      seek: seconds(el, "data-helios-seek"),
      fadeIn: seconds(el, "data-helios-fade-in"),
      fadeOut: seconds(el, "data-helios-fade-out"),
    };
  });
}

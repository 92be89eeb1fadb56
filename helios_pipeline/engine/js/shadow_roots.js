// window.__helios_all_roots(): the document and every open shadow root in it (nested ones too), in
// document order: where the seek driver (timeline.js) and the media scan (media_scan.js) look for
// elements, so both see the same ones. Installed once with the seek driver by the page set-up
// (engine/page.py), before any page script runs.
(() => {
  if (window.__helios_all_roots) return;
  const allRoots = () => {
    const roots = [document];
    const walk = (root) => {
      const walker = document.createTreeWalker(root, NodeFilter.SHOW_ELEMENT);
      for (let node = walker.currentNode; node; node = walker.nextNode()) {
        if (node.shadowRoot) {
          roots.push(node.shadowRoot);
          walk(node.shadowRoot);
        }
      }
    };
    walk(document);
    return roots;
  };
  Object.defineProperty(window, "__helios_all_roots", { value: allRoots });
})();

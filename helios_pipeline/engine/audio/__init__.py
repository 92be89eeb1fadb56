"""Audio on one sample timeline (:mod:`.timeline`): the page's own sound per chunk, and the final mix."""

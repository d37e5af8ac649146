// Typeset the equations that pymdownx.arithmatex wrapped (generic mode): a display block is
// <div class="arithmatex">\[ … \]</div>, an inline one <span class="arithmatex">\( … \)</span>.
// KaTeX is loaded from its CDN after this file; offline it is absent and the TeX stays readable.
(function () {
  "use strict";

  function typeset(root) {
    if (typeof window.katex === "undefined") {
      return;
    }
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      var display = element.tagName === "DIV";
      var tex = element.textContent.trim();
      var open = display ? "\\[" : "\\(";
      var close = display ? "\\]" : "\\)";
      if (tex.startsWith(open) && tex.endsWith(close)) {
        tex = tex.slice(open.length, tex.length - close.length);
      }
      window.katex.render(tex, element, { displayMode: display, throwOnError: false });
    });
  }

  function start() {
    // Material's instant navigation swaps pages without a reload; document$ announces each one.
    if (typeof window.document$ !== "undefined") {
      window.document$.subscribe(function () {
        typeset(document.body);
      });
    } else {
      typeset(document.body);
    }
  }

  // Material's bundle (which defines document$) is loaded before this file; document$ replays
  // the current page to late subscribers and first fires at DOMContentLoaded, after KaTeX loaded.
  if (typeof window.document$ !== "undefined") {
    start();
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

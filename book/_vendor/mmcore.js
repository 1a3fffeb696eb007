// mmcore's own site script (not vendored; loaded on every page through html_js_files).
// A table wider than the column scrolls sideways, but phones draw no scrollbar until one
// scrolls: put a short note above each such table so a reader knows more columns follow.
(() => {
  const SELECTOR = ".cell_output .output.text_html, .bd-article .pst-scrollable-table-container";

  function mark() {
    document.querySelectorAll(SELECTOR).forEach((box) => {
      if (!box.querySelector("table")) return;
      const wide = box.scrollWidth > box.clientWidth + 1;
      box.classList.toggle("mm-wide", wide);
      let note = box.previousElementSibling;
      if (!note || !note.classList.contains("mm-wide-note")) {
        if (!wide) return;
        note = document.createElement("p");
        note.className = "mm-wide-note";
        note.textContent = "Wide table: scroll it sideways to see every column \u2192";
        box.before(note);
      }
      note.hidden = !wide;
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mark);
  else mark();
  window.addEventListener("resize", mark);
})();

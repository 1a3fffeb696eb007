// The ipywidgets embed manager (widgets/embed.js) typesets widget labels through the MathJax 2
// API (MathJax.Hub.Queue); the book loads MathJax 3, which has no Hub, so every widget with a
// description threw "Cannot read properties of undefined (reading 'Queue')". Map that one call
// onto MathJax 3. Deferred scripts (MathJax) have run by DOMContentLoaded; widgets render on load.
window.addEventListener("DOMContentLoaded", () => {
  const mathjax = window.MathJax;
  if (mathjax && !mathjax.Hub) {
    mathjax.Hub = {
      Queue: ([, , element]) => mathjax.typesetPromise && mathjax.typesetPromise([element]),
    };
  }
});

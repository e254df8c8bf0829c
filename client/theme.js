// The theme before the app loads, so the page never flashes the wrong one. A file, not an
// inline script: the page's content security policy allows scripts from this server only.
(function () {
  var t = null;
  try { t = localStorage.getItem('traum-theme'); } catch (_) {}
  if (t !== 'dark' && t !== 'light') {
    t = window.matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark';
  }
  document.documentElement.dataset.theme = t;
})();

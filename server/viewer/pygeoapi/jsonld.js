// pygeoapi's pages: embed the page's JSON-LD for search engines (pygeoapi's own inline script,
// moved here so that the Content-Security-Policy allows scripts from this server only)
const path = `${window.location.origin}${window.location.pathname}?f=jsonld`;
fetch(path).then((response) => (response.ok ? response.text() : null)).then((text) => {
  if (!text) return;
  const block = document.createElement("script");
  block.type = "application/ld+json";
  // search engines do not expect the full context path (pyld needs it)
  block.textContent = text.replace("docs/jsonldcontext.jsonld", "");
  document.head.appendChild(block);
}).catch(() => {});

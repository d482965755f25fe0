// /openapi?f=html: Swagger UI (from npm's swagger-ui-dist) on this server's OpenAPI document,
// whose URL the page carries in data-url (pygeoapi's inline start script, moved here)
const holder = document.getElementById("swagger-ui");
window.ui = window.SwaggerUIBundle({
  url: holder.dataset.url,
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [window.SwaggerUIBundle.presets.apis, window.SwaggerUIStandalonePreset],
  plugins: [window.SwaggerUIBundle.plugins.DownloadUrl],
  layout: "StandaloneLayout",
});

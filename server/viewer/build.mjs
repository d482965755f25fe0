// Builds the /viewer page's static files into static/ (gitignored): one JS bundle and one CSS
// bundle (our sources + OpenLayers + uPlot, from node_modules), the offline world layer and the
// third-party licences. Run by scripts/setup.sh (`npm ci && npm run build`); no network needed.
import { build } from "esbuild";
import {
  copyFileSync, cpSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "static");
const tmp = join(here, ".static-build");
rmSync(tmp, { recursive: true, force: true });
mkdirSync(tmp, { recursive: true });

await build({
  entryPoints: { viewer: join(here, "src", "main.js") },
  bundle: true,
  format: "esm",
  target: ["es2020"],
  minify: true,
  sourcemap: true,
  legalComments: "linked",
  outdir: tmp,
  logLevel: "warning",
});

// The offline base map: Natural Earth countries at 1:50m as TopoJSON (public domain).
copyFileSync(join(here, "node_modules", "world-atlas", "countries-50m.json"),
             join(tmp, "countries-50m.json"));
// pygeoapi's HTML pages, under the same Content-Security-Policy: the assets its templates take
// from CDNs, from npm (vendor/), and the scripts it inlines, as files of ours (pygeoapi/);
// aquamask.server.pygeoapi_pages points the templates at them
const vendor = join(tmp, "vendor");
mkdirSync(vendor);
const modules = join(here, "node_modules");
copyFileSync(join(modules, "bootstrap", "dist", "css", "bootstrap.min.css"),
             join(vendor, "bootstrap.min.css"));
for (const file of ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                    "favicon-16x16.png", "favicon-32x32.png"]) {
  copyFileSync(join(modules, "swagger-ui-dist", file), join(vendor, file));
}
cpSync(join(here, "pygeoapi"), join(tmp, "pygeoapi"), { recursive: true });

const licences = ["ol", "uplot", "world-atlas", "bootstrap", "swagger-ui-dist"].map((name) => {
  const dir = join(here, "node_modules", name);
  const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8"));
  let text = "";
  for (const file of ["LICENSE", "LICENSE.md", "LICENSE.txt"]) {
    try { text = readFileSync(join(dir, file), "utf8"); break; } catch { /* next */ }
  }
  return `${name} ${pkg.version} (${pkg.license})\n\n${text}`;
});
writeFileSync(join(tmp, "THIRD-PARTY-LICENSES.txt"), licences.join("\n\n----\n\n"));

// Replace the previous build in one step, so a running server never serves half of one.
rmSync(out, { recursive: true, force: true });
renameSync(tmp, out);
console.log(`viewer: built ${out}`);

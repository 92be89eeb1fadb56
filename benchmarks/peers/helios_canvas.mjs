// Render one page with Helios's own renderer (@helios-project/renderer) in canvas mode and print
// the wall time as JSON. Run by benchmarks/bench_canvas.py with the package installed into a
// temporary folder (never committed); argument: a JSON job {modules, url, output, options}.
import { pathToFileURL } from "node:url";
import path from "node:path";

const job = JSON.parse(process.argv[2]);
const entry = path.join(job.modules, "node_modules", "@helios-project", "renderer", "dist", "index.js");
const { RenderOrchestrator } = await import(pathToFileURL(entry).href);
const started = performance.now();
await RenderOrchestrator.render(job.url, job.output, job.options);
process.stdout.write(JSON.stringify({ seconds: (performance.now() - started) / 1000 }) + "\n");

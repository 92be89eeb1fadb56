// Render one page with Helios's own renderer (@helios-project/renderer) in canvas mode and print
// the wall time as JSON. Run by benchmarks/bench_canvas.py with the package installed into a
// temporary folder (never committed); argument: a JSON job {modules, url, output, options}.
// Prints {seconds, setupCpuSeconds}: wall time of the render, CPU node spent before it began.
import { pathToFileURL } from "node:url";
import path from "node:path";

const job = JSON.parse(process.argv[2]);
const entry = path.join(job.modules, "node_modules", "@helios-project", "renderer", "dist", "index.js");
const { RenderOrchestrator } = await import(pathToFileURL(entry).href);
const setup = process.cpuUsage(); // start-up and imports: the caller subtracts them from the CPU time
const started = performance.now();
await RenderOrchestrator.render(job.url, job.output, job.options);
const seconds = (performance.now() - started) / 1000;
const setupCpuSeconds = (setup.user + setup.system) / 1e6;
process.stdout.write(JSON.stringify({ seconds, setupCpuSeconds }) + "\n");

// The chapter's cluster examples: a master forks N workers that share one
// listening socket.
//
// Usage: node node-cluster.js PORT WORKERS [CHAOS_N]
//   CHAOS_N absent or 0: the plain cluster (the chapter's first example, with
//     the master reforking a worker that dies).
//   CHAOS_N > 0: the chapter's last example. One request in CHAOS_N spins for
//     ever; each worker reports to the master every 1 s through process.send;
//     every 1 s the master kills and reforks any worker silent for 5 s.
// Either way, GET /work-inline?ms=N keeps the worker's event loop busy for
// N ms before answering, as vigil's demo route of that name does (the slow mix
// of `compare slow`); every other request gets Hello World.
'use strict';
const cluster = require('cluster');
const http = require('http');

const port = Number(process.argv[2] || process.env.PORT || 8000);
const numWorkers = Number(process.argv[3] || require('os').cpus().length);
const chaosN = Number(process.argv[4] || 0);

// The chapter's thresholds: checked every second, killed after 5 s of silence.
const CHECK_MS = 1000;
const SILENT_MS = 5000;
const REPORT_MS = 1000;

// The chapter's model: every worker accepts from the shared socket itself,
// and requests never pass through the master. Node's default on Linux is
// SCHED_RR, where the master accepts every connection and hands it to a worker
// over IPC: that costs the master CPU per connection, and it would keep handing
// connections to a worker that spins.
cluster.schedulingPolicy = cluster.SCHED_NONE;

if (cluster.isPrimary) {
  const workers = {};

  function createWorker() {
    const worker = cluster.fork();
    const pid = worker.process.pid;
    // The chapter back-dates the first report by 1 s to allow boot time.
    workers[pid] = { worker: worker, lastCb: Date.now() - 1000 };
    worker.on('message', function (m) {
      if (m.cmd === 'reportMem' && workers[m.process]) {
        workers[m.process].lastCb = Date.now();
      }
    });
  }

  for (let i = 0; i < numWorkers; i++) createWorker();

  // 'death' in the chapter is 'exit' in current Node. A worker the watchdog
  // killed was already replaced, so only unexpected deaths are reforked here.
  cluster.on('exit', function (worker, code, signal) {
    const pid = worker.process.pid;
    if (workers[pid]) {
      console.log('worker ' + pid + ' died (' + (signal || code) + ')');
      delete workers[pid];
      createWorker();
    }
  });

  if (chaosN > 0) {
    setInterval(function () {
      const time = Date.now();
      for (const pid in workers) {
        if (workers[pid].lastCb + SILENT_MS < time) {
          // The driver scrapes this line (timestamped) to mark replacements.
          console.log(new Date().toISOString() + ' Long running worker ' + pid + ' killed, replaced');
          const w = workers[pid].worker;
          delete workers[pid];
          // kill() on a worker whose loop spins never completes the
          // disconnect handshake; SIGKILL the process as the chapter intends.
          w.process.kill('SIGKILL');
          createWorker();
        }
      }
    }, CHECK_MS);
  }

  // Stop the whole tree when the driver stops the master.
  process.on('SIGTERM', function () {
    for (const pid in workers) workers[pid].worker.process.kill('SIGKILL');
    process.exit(0);
  });
} else {
  http.Server(function (req, res) {
    if (chaosN > 0 && Math.floor(Math.random() * chaosN) === 0) {
      // The chapter's runaway handler: this worker never answers again.
      console.log('Stopped ' + process.pid + ' from ever finishing');
      for (;;) { /* spin */ }
    }
    if (req.url !== '/' && req.url.startsWith('/work-inline')) {
      const m = /[?&]ms=(\d+)/.exec(req.url);
      burnCpu(m ? Number(m[1]) : 100);
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('worked inline\n');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('Hello World\n');
  }).listen(port, '127.0.0.1');

  // Synchronous work on the event loop for `ms` of wall-clock time, like
  // vigil's burn_cpu (a loop checking the clock).
  function burnCpu(ms) {
    const end = process.hrtime.bigint() + BigInt(ms) * 1000000n;
    let x = 1;
    while (process.hrtime.bigint() < end) {
      for (let i = 0; i < 1000; i++) x = (x * 1103515245 + 12345) % 2147483648;
    }
    return x;
  }

  if (chaosN > 0) {
    setInterval(function report() {
      process.send({ cmd: 'reportMem', memory: process.memoryUsage(), process: process.pid });
    }, REPORT_MS);
  }
}

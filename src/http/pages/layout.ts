/**
 * The frame of the pages rendered here (the image page, error pages): the
 * same stylesheet and script as the start page (`/style.css`, `/app.js`
 * from WEB_DIR, else the bundled web/ directory).
 */
import { html } from 'hono/html';
import type { Html } from './builds.js';

export function layout(opts: { title: string; main: Html; head?: Html }): Html {
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<link rel="icon" href="data:,">
<title>${opts.title}</title>
<link rel="stylesheet" href="/style.css">
<script src="/app.js" defer></script>
${opts.head ?? ''}
</head>
<body>
<header class="site"><a href="/">nixery-ts</a></header>
${opts.main}
</body>
</html>
`;
}

/** A page saying what went wrong, in the API's (escaped) words. */
export function errorPage(title: string, message: string, detail?: Html): Html {
  return layout({
    title: `${title} · nixery-ts`,
    main: html`<main class="problem"><h1>${title}</h1><p class="message">${message}</p>${detail ?? ''}</main>`,
  });
}

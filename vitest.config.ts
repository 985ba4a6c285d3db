import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests run real Nix builds and real registry clients.
    testTimeout: 120_000,
    hookTimeout: 180_000,
    // Two cores: integration files each start servers and Nix processes.
    maxWorkers: 2,
    // The demo package set is local: never wait on an unreachable binary cache.
    env: { NIX_CONFIG: 'substituters =' },
    globalSetup: ['test/helpers/global-setup.ts'],
  },
});

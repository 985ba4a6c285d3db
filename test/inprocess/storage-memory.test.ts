/** The in-memory backend the in-process tests use keeps the same contract as the real ones. */
import { MemoryStorage } from '../../src/storage/memory.js';
import { storageContract } from '../helpers/storage-contract.js';

storageContract('memory', async (now) => new MemoryStorage({ now }), {
  // Its staging objects are writes in progress: one whose writer never
  // finishes is what a killed process would leave.
  strandStaging: async (s) => {
    void s.persistBlob('application/octet-stream', () => new Promise<never>(() => {})).catch(() => undefined);
  },
});

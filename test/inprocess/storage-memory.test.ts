/** The in-memory backend the in-process tests use keeps the same contract as the real ones. */
import { MemoryStorage } from '../../src/storage/memory.js';
import { storageContract } from '../helpers/storage-contract.js';

storageContract('memory', async () => new MemoryStorage());
